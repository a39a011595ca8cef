"""`folder`: any audio-visual localization data a user brings, as one flat directory.

Layout of `manual_dir` (one example per id; `<id>` is the file stem)::

  manual_dir/
    <id>.jpg | <id>.jpeg | <id>.png        the frame (optional when a video is given)
    <id>.wav | <id>.flac | <id>.mp3 | <id>.mp4 | <id>.mkv | ...
                                           the sound (a video's audio track); a
                                           video without an image also gives
                                           the frame (its middle frame)
    <id>.json                              optional: boxes of the sounding object,
                                           {"boxes": [[x0, y0, x1, y1], ...]} in
                                           pixels of the ORIGINAL image/frame,
                                           half-open (numpy slicing)

Ids with a `.json` form the `test` split (boxes converted through the test
view's resize + centre crop, `gt_format="pixels"`); the others are split into
`train` and a held-out unannotated `validation` (min(num_validation, max(1, n // 10))
ids by SHA-1 of the id, see `builder_lib.validation_ids`). Without any
`.json` there is no test split. Every id needs a sound; an id with neither an
image nor a video is an error naming the file (or skipped and counted with
`skip_bad`). See `soundloc_jax/builder_lib.py` for what is stored.
"""

from __future__ import annotations

import os

from soundloc_jax import builder_lib

LAYOUT = """<id>.jpg|.jpeg|.png (frame, optional with a video) + <id>.wav|.flac|.mp3|.mp4|.mkv|...
(sound) [+ <id>.json {"boxes": [[x0, y0, x1, y1], ...]} in original-image pixels -> test
split], all in manual_dir itself"""


class Builder(builder_lib.RealDataBuilder):
  """Frames + sounds from a plain folder (see the module docstring)."""

  GT_FORMAT = "pixels"
  MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir holds " + LAYOUT
  BUILDER_CONFIGS = [builder_lib.RealDataConfig(
      name="default", description="LVS front end on 3 s (257x299).")]

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    manual_dir = dl_manager.manual_dir
    if not os.path.isdir(manual_dir):
      raise builder_lib.missing_files_error("folder", manual_dir, LAYOUT, "no such directory")
    train, test, problems = builder_lib.scan_folder(manual_dir)
    options = builder_lib.resolve_options(cfg, box_space="original")
    builder_lib.skip_problems(problems, "folder", manual_dir, LAYOUT, options,
                              self.info.metadata["skipped"])
    if not train:
      raise builder_lib.missing_files_error("folder", manual_dir, LAYOUT,
                                            "no unannotated (training) example")
    splits = builder_lib.train_validation_tasks(train, cfg.num_validation)
    if test:
      splits["test"] = test
    return {name: self._generate_examples(tasks, options) for name, tasks in splits.items()}

