"""`vggss`: the VGG-SS localization test set (5,158 VGGSound clips with boxes and class names).

Layout of `manual_dir` (the user's copy; nothing is downloaded)::

  manual_dir/
    vggss.json             [{"file": "<id>", "class": "<name>",
                             "bbox": [[x0, y0, x1, y1], ...]}, ...] (normalised
                             coordinates, as released)
    video/<id>.mp4         the clips (frame: the middle one; sound: its track)
      or
    frames/<id>.jpg + audio/<id>.wav   pre-extracted frame and sound per id
    vggss_test_plus_silent.csv   optional: SLAVC's extended test list (header
                           video,audio,label; rows <frame id>,<audio id>,non-sounding):
                           adds `test_offscreen`

One split, `test`: the test view (shorter side 224, centre crop), the
training front end's `spectrogram` (3 s around the middle), `waveform` (the
first 10 s at 16 kHz, int16, for the LVS test front end), `gt_boxes` = the
json's numbers unchanged (`gt_format="unit"`: `evaluation.annotations.vggss_gt_map`
clamps negatives, ORs the boxes and keeps inverted/out-of-range ones as the
official code does) and `class_name`. Ids whose media are missing are left
out and reported (count and ids in `info.metadata["missing_test_ids"]`);
corrupt media stop the build naming the file unless `skip_bad`.

`test_offscreen` (with vggss_test_plus_silent.csv; Extended VGG-SS, SLAVC,
NeurIPS 2022): each non-sounding pair, the frame of clip `<video>` (the
middle frame of video/<video>.mp4, or frames/<video>.jpg) with the sound of
`<audio>` (video/<audio>.mp4 or audio/<audio>.wav; the same clip when its
source is out of view), id `<video>__<audio>`, no `gt_boxes`, `class_name`
"". `test+test_offscreen` is the extended test set
(`info.metadata["offscreen_splits"]`); pairs with a missing file are left
out and listed in `info.metadata["missing_offscreen_pairs"]`.
"""

from __future__ import annotations

import json
import os

import tensorflow_datasets as tfds

from soundloc_jax import builder_lib, media
from soundloc_jax.errors import MediaError

OFFSCREEN_LIST = "vggss_test_plus_silent.csv"   # SLAVC's extended test list
LAYOUT = """vggss.json ([{"file": id, "class": name, "bbox": [[x0, y0, x1, y1], ...]}, ...]) and
per id either video/<id>.mp4 or frames/<id>.jpg + audio/<id>.wav"""


def read_annotations(path: str) -> list[tuple[str, str, tuple]]:
  """`(id, class name, boxes)` of every vggss.json entry."""
  try:
    with open(path) as f:
      items = json.load(f)
    out = [(str(it["file"]), str(it.get("class", "")),
            tuple(tuple(float(v) for v in box[:4]) for box in it["bbox"])) for it in items]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise MediaError(f"{path}: expected a list of {{\"file\", \"class\", \"bbox\"}} "
                     f"entries ({type(e).__name__}: {e})") from e
  return out


class Builder(builder_lib.RealDataBuilder):
  """VGG-SS test clips with boxes (see the module docstring)."""

  GT_FORMAT = "unit"
  HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/research/lvs/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir holds " + LAYOUT
  BUILDER_CONFIGS = [builder_lib.RealDataConfig(
      name="default", description="Test view + LVS front end on 3 s + 10 s waveform.")]

  def extra_features(self) -> dict:
    return {"class_name": tfds.features.Text()}

  def extra_metadata(self) -> dict:
    return dict(missing_test_ids=[], offscreen_splits=[], missing_offscreen_pairs=[])

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    manual_dir = os.fspath(dl_manager.manual_dir)
    json_path = os.path.join(manual_dir, "vggss.json")
    if not os.path.exists(json_path):
      raise builder_lib.missing_files_error("vggss", manual_dir, LAYOUT, "no vggss.json")
    tasks, missing = [], []
    for i, name, boxes in read_annotations(json_path):
      video = builder_lib.find_file(os.path.join(manual_dir, "video"), i, media.VIDEO_EXTENSIONS)
      image = builder_lib.find_file(os.path.join(manual_dir, "frames"), i, media.IMAGE_EXTENSIONS)
      sound = builder_lib.find_file(os.path.join(manual_dir, "audio"), i,
                                    media.AUDIO_EXTENSIONS + media.VIDEO_EXTENSIONS)
      extra = (("class_name", name),)
      if video:
        tasks.append(builder_lib.Task(id=i, video=video, test=True, gt_boxes=boxes, extra=extra))
      elif image and sound:
        tasks.append(builder_lib.Task(id=i, image=image, audio=sound, test=True, gt_boxes=boxes,
                                      extra=extra))
      else:
        missing.append(i)
    if not tasks:
      raise builder_lib.missing_files_error("vggss", manual_dir, LAYOUT,
                                            f"none of the {len(missing)} vggss.json ids has media")
    self.info.metadata["missing_test_ids"] = missing
    if missing:
      builder_lib.log(f"{len(missing)} vggss.json ids have no media and are left out: "
                      + ", ".join(missing))
    splits = {"test": tasks}
    offscreen = self._offscreen_tasks(manual_dir)
    if offscreen:
      splits["test_offscreen"] = offscreen
      self.info.metadata["offscreen_splits"] = ["test_offscreen"]
    options = builder_lib.resolve_options(cfg)
    return {name: self._generate_examples(t, options) for name, t in splits.items()}

  def _offscreen_tasks(self, manual_dir: str) -> list:
    """Tasks of the extended list's off-screen pairs (module docstring)."""
    path = os.path.join(manual_dir, OFFSCREEN_LIST)
    if not os.path.exists(path):
      return []
    tasks, missing = [], []
    for video_id, sound_id in builder_lib.read_offscreen_pairs(path):
      ident = builder_lib.offscreen_id(video_id, sound_id)
      video = builder_lib.find_file(os.path.join(manual_dir, "video"), video_id,
                                    media.VIDEO_EXTENSIONS)
      image = "" if video else builder_lib.find_file(os.path.join(manual_dir, "frames"), video_id,
                                                     media.IMAGE_EXTENSIONS)
      sound = (builder_lib.find_file(os.path.join(manual_dir, "video"), sound_id,
                                     media.VIDEO_EXTENSIONS)
               or builder_lib.find_file(os.path.join(manual_dir, "audio"), sound_id,
                                        media.AUDIO_EXTENSIONS + media.VIDEO_EXTENSIONS))
      if (video or image) and sound:
        tasks.append(builder_lib.Task(id=ident, video=video, image=image, audio=sound, test=True,
                                      extra=(("class_name", ""),)))
      else:
        missing.append(ident)
    self.info.metadata["missing_offscreen_pairs"] = missing
    builder_lib.log(f"{path}: {len(tasks)} off-screen pairs"
                    + (f"; {len(missing)} with a missing file left out: {', '.join(missing)}"
                       if missing else ""))
    return tasks
