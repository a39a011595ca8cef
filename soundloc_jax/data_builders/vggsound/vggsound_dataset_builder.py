"""`vggsound`: VGGSound training clips (centre frame + audio around it), full or the 144k subset.

Layout of `manual_dir` (the user's copy; nothing is downloaded)::

  manual_dir/
    video/<id>.mp4           the clips (.mp4|.mkv|.webm|.avi|.mov), e.g. <id> =
                             <youtube_id>_<start_seconds:06d> as in VGG-SS
    vggsound.csv             optional: rows youtube_id,start_seconds,label,split;
                             with it, config `full` takes the rows with split
                             "train" (id <youtube_id>_<start:06d>); without it,
                             every clip in video/
    vggsound_144k.txt        config `144k`: its ids, one per line (or a csv's
                             first column)
    vggss.json               optional: VGG-SS test ids found in it are removed
                             from training (their count is in the metadata)

Each example: the frame in the middle of the clip (`media.read_video_frame`)
and the `clip_seconds` (3 s) of its audio track around the middle of the
audio. Splits: `train` and `validation` (min(num_validation = 500, max(1, n // 10))
held-out ids by SHA-1, unannotated, for model selection). Test sets are other
datasets: `vggss:test` (and `flickr_soundnet/...:test`). A listed clip that
is missing or corrupt stops the build with an error naming the file, unless
`skip_bad` (or SOUNDLOC_BUILD_SKIP_BAD=1) skips and counts it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

from soundloc_jax import builder_lib, media

LAYOUT = """video/<id>.mp4 clips, optional vggsound.csv (youtube_id,start_seconds,label,split;
config full uses its train rows, else every clip), vggsound_144k.txt (config 144k: one id per
line), optional vggss.json (its ids are kept out of training)"""


@dataclasses.dataclass(eq=False)
class VggSoundConfig(builder_lib.RealDataConfig):
  list_file: str = ""  # "" = vggsound.csv train rows, or every clip


def csv_train_ids(path: str) -> list[str]:
  """`<youtube_id>_<start:06d>` of the rows of vggsound.csv whose split is train."""
  ids = []
  with open(path, newline="") as f:
    for row in csv.reader(f):
      if len(row) >= 4 and row[3].strip() == "train" and row[1].strip().isdigit():
        ids.append(f"{row[0].strip()}_{int(row[1]):06d}")
  return ids


def vggss_ids(path: str) -> set[str]:
  with open(path) as f:
    return {str(item["file"]) for item in json.load(f)}


class Builder(builder_lib.RealDataBuilder):
  """VGGSound training clips (see the module docstring)."""

  GT_FORMAT = "unit"
  HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/vggsound/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir holds " + LAYOUT
  BUILDER_CONFIGS = [
      VggSoundConfig(name="full", description="vggsound.csv train rows (or every clip)."),
      VggSoundConfig(name="144k", list_file="vggsound_144k.txt",
                     description="The 144k subset of manual_dir/vggsound_144k.txt."),
  ]

  def extra_metadata(self) -> dict:
    return dict(list_file=self.builder_config.list_file, vggss_ids_removed=0)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    manual_dir = os.fspath(dl_manager.manual_dir)
    video_dir = os.path.join(manual_dir, "video")
    if not os.path.isdir(video_dir):
      raise builder_lib.missing_files_error("vggsound", manual_dir, LAYOUT, "no video/ folder")
    if cfg.list_file:
      list_path = os.path.join(manual_dir, cfg.list_file)
      if not os.path.exists(list_path):
        raise builder_lib.missing_files_error("vggsound", manual_dir, LAYOUT,
                                              f"no id list {cfg.list_file}")
      ids = builder_lib.read_id_list(list_path)
    elif os.path.exists(os.path.join(manual_dir, "vggsound.csv")):
      ids = csv_train_ids(os.path.join(manual_dir, "vggsound.csv"))
    else:
      ids = sorted({os.path.splitext(f)[0] for f in os.listdir(video_dir)
                    if f.lower().endswith(media.VIDEO_EXTENSIONS)})
    meta = self.info.metadata
    vggss_json = os.path.join(manual_dir, "vggss.json")
    if os.path.exists(vggss_json):
      test_ids = vggss_ids(vggss_json)
      kept = [i for i in ids if i not in test_ids]
      meta["vggss_ids_removed"] = len(ids) - len(kept)
      ids = kept
    options = builder_lib.resolve_options(cfg)
    tasks, problems = [], []
    for i in ids:
      video = builder_lib.find_file(video_dir, i, media.VIDEO_EXTENSIONS)
      if video:
        tasks.append(builder_lib.Task(id=i, video=video))
      else:
        problems.append((i, f"{os.path.join(video_dir, i)}.mp4: missing clip of listed id {i!r}"))
    builder_lib.skip_problems(problems, "vggsound", manual_dir, LAYOUT, options, meta["skipped"])
    splits = builder_lib.train_validation_tasks(tasks, cfg.num_validation)
    return {name: self._generate_examples(t, options) for name, t in splits.items()}
