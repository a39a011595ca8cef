"""`flickr_soundnet`: Flickr-SoundNet training subsets and the 250-id annotated test set.

Layout of `manual_dir` (the user's copy; nothing is downloaded)::

  manual_dir/
    frames/<id>.jpg          one frame per video, training and test ids (.jpg|.jpeg|.png)
    audio/<id>.wav           its sound (.wav|.flac|.mp3|.ogg|.m4a, or a video .mp4|.mkv|...)
    flickr_10k.txt           training id lists, one id per line (or the first column
    flickr_20k.txt           of a csv); only the one the config uses must exist:
    flickr_144k.txt          config 10k / 20k / 144k
    flickr_test.txt          the 250 annotated test ids (or flickr_test.csv; if
                             absent: every Annotations/<id>.xml)
    Annotations/<id>.xml     the test annotations (annotator <bbox> elements,
                             256-pixel coordinates)
    flickr_test_plus_silent.csv   optional: SLAVC's extended test list (header
                             video,audio,label; rows <frame id>,<audio id>,non-sounding;
                             `builder_lib.read_offscreen_pairs`): adds `test_offscreen`

Splits: `train` (the list minus `validation` and minus any test id),
`validation` (min(num_validation = 500, max(1, n // 10)) held-out list ids by SHA-1,
unannotated, for model selection; never the test set) and `test` (ids of
flickr_test.txt whose frame, sound and XML all exist; `gt_boxes` are the XML
numbers, `gt_format="flickr256"`). Test ids with a missing file are not a
crash: their count and ids are logged and stored in `info.metadata`
(`missing_test_ids`); 249 of the 250 exist in the public release. A listed
training id with a missing or corrupt file stops the build with an error
naming the file, unless `skip_bad` (or SOUNDLOC_BUILD_SKIP_BAD=1) skips and
counts it (`info.metadata["skipped"]`).

`test_offscreen` (with flickr_test_plus_silent.csv; Extended Flickr-SoundNet,
SLAVC, NeurIPS 2022): each non-sounding pair, the frame `frames/<video>` with
the sound `audio/<audio>` (another video's), id `<video>__<audio>`, no
`gt_boxes`: the sound's source is not in the frame. `test+test_offscreen` is
the extended test set (`info.metadata["offscreen_splits"]`; the `extended`
evaluator, docs/evaluation.md). Pairs with a missing file are left out and
listed in `info.metadata["missing_offscreen_pairs"]`.
"""

from __future__ import annotations

import dataclasses
import os

from soundloc_jax import builder_lib, media
from soundloc_jax.errors import MediaError
from soundloc_jax.evaluation import annotations

LAYOUT = """frames/<id>.jpg, audio/<id>.wav (or .flac/.mp3/.mp4...), the training list
flickr_10k.txt | flickr_20k.txt | flickr_144k.txt (one id per line), flickr_test.txt (250
test ids) and Annotations/<id>.xml"""
SOUND_EXTENSIONS = media.AUDIO_EXTENSIONS + media.VIDEO_EXTENSIONS
OFFSCREEN_LIST = "flickr_test_plus_silent.csv"   # SLAVC's extended test list


@dataclasses.dataclass(eq=False)
class FlickrConfig(builder_lib.RealDataConfig):
  list_file: str = "flickr_10k.txt"


def _config(size: str) -> FlickrConfig:
  return FlickrConfig(name=size, list_file=f"flickr_{size}.txt",
                      description=f"Training ids of manual_dir/flickr_{size}.txt; LVS front end on 3 s.")


def _test_ids(manual_dir: str) -> list[str]:
  for name in ("flickr_test.txt", "flickr_test.csv"):
    path = os.path.join(manual_dir, name)
    if os.path.exists(path):
      return builder_lib.read_id_list(path)
  annotations = os.path.join(manual_dir, "Annotations")
  if os.path.isdir(annotations):
    return sorted(os.path.splitext(f)[0] for f in os.listdir(annotations) if f.endswith(".xml"))
  return []


class Builder(builder_lib.RealDataBuilder):
  """Flickr-SoundNet frames + sounds (see the module docstring)."""

  GT_FORMAT = "flickr256"
  HOMEPAGE = "https://github.com/ardasnck/learning_to_localize_sound_source"
  MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir holds " + LAYOUT
  BUILDER_CONFIGS = [_config("10k"), _config("20k"), _config("144k")]

  def extra_metadata(self) -> dict:
    return dict(list_file=self.builder_config.list_file, missing_test_ids=[],
                test_ids_removed_from_train=0, offscreen_splits=[], missing_offscreen_pairs=[])

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    manual_dir = os.fspath(dl_manager.manual_dir)
    list_path = os.path.join(manual_dir, cfg.list_file)
    if not os.path.exists(list_path):
      raise builder_lib.missing_files_error("flickr_soundnet", manual_dir, LAYOUT,
                                            f"no training list {cfg.list_file}")
    options = builder_lib.resolve_options(cfg)
    meta = self.info.metadata
    test, missing = self._test_tasks(manual_dir)
    meta["missing_test_ids"] = missing
    if missing:
      builder_lib.log(f"{len(missing)} test ids have a missing frame, sound or XML and are left "
                      f"out: {', '.join(missing)}")
    test_ids = {t.id for t in test} | set(missing)
    listed = builder_lib.read_id_list(list_path)
    train_ids = [i for i in listed if i not in test_ids]
    meta["test_ids_removed_from_train"] = len(listed) - len(train_ids)
    tasks = []
    for i in train_ids:
      image = builder_lib.find_file(os.path.join(manual_dir, "frames"), i, media.IMAGE_EXTENSIONS)
      sound = builder_lib.find_file(os.path.join(manual_dir, "audio"), i, SOUND_EXTENSIONS)
      if image and sound:
        tasks.append(builder_lib.Task(id=i, image=image, audio=sound))
        continue
      problem = (f"{os.path.join(manual_dir, 'frames' if not image else 'audio', i)}.*: "
                 f"missing {'frame' if not image else 'sound'} of listed training id {i!r}")
      if not options.skip_bad:
        raise builder_lib.missing_files_error("flickr_soundnet", manual_dir, LAYOUT, problem)
      meta["skipped"].append({"id": i, "error": problem})
      builder_lib.log(f"skipped: {problem}")
    splits = builder_lib.train_validation_tasks(tasks, cfg.num_validation)
    splits["test"] = test
    offscreen = self._offscreen_tasks(manual_dir)
    if offscreen:
      splits["test_offscreen"] = offscreen
      meta["offscreen_splits"] = ["test_offscreen"]
    return {name: self._generate_examples(t, options) for name, t in splits.items()}

  def _test_tasks(self, manual_dir: str):
    tasks, missing = [], []
    for i in _test_ids(manual_dir):
      image = builder_lib.find_file(os.path.join(manual_dir, "frames"), i, media.IMAGE_EXTENSIONS)
      sound = builder_lib.find_file(os.path.join(manual_dir, "audio"), i, SOUND_EXTENSIONS)
      xml = os.path.join(manual_dir, "Annotations", i + ".xml")
      if not (image and sound and os.path.exists(xml)):
        missing.append(i)
        continue
      try:
        # The XML numbers as the official reader takes them (size 256: unscaled).
        boxes = tuple(tuple(b) for b in annotations.flickr_boxes(xml, size=256))
      except Exception as e:  # ParseError, ValueError: a user's file
        raise MediaError(f"{xml}: not a readable annotation ({type(e).__name__}: {e})") from e
      tasks.append(builder_lib.Task(id=i, image=image, audio=sound, test=True, gt_boxes=boxes))
    return tasks, missing

  def _offscreen_tasks(self, manual_dir: str) -> list:
    """Tasks of the extended list's off-screen pairs (module docstring)."""
    path = os.path.join(manual_dir, OFFSCREEN_LIST)
    if not os.path.exists(path):
      return []
    tasks, missing = [], []
    for video, sound_id in builder_lib.read_offscreen_pairs(path):
      image = builder_lib.find_file(os.path.join(manual_dir, "frames"), video, media.IMAGE_EXTENSIONS)
      sound = builder_lib.find_file(os.path.join(manual_dir, "audio"), sound_id, SOUND_EXTENSIONS)
      if image and sound:
        tasks.append(builder_lib.Task(id=builder_lib.offscreen_id(video, sound_id), image=image,
                                      audio=sound, test=True))
      else:
        missing.append(builder_lib.offscreen_id(video, sound_id))
    self.info.metadata["missing_offscreen_pairs"] = missing
    builder_lib.log(f"{path}: {len(tasks)} off-screen pairs"
                    + (f"; {len(missing)} with a missing file left out: {', '.join(missing)}"
                       if missing else ""))
    return tasks
