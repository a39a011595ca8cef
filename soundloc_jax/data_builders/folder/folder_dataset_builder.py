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

import tensorflow_datasets as tfds

from soundloc_jax import builder_lib

LAYOUT = """<id>.jpg|.jpeg|.png (frame, optional with a video) + <id>.wav|.flac|.mp3|.mp4|.mkv|...
(sound) [+ <id>.json {"boxes": [[x0, y0, x1, y1], ...]} in original-image pixels -> test
split], all in manual_dir itself"""


class Builder(tfds.core.GeneratorBasedBuilder):
  """Frames + sounds from a plain folder (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir holds " + LAYOUT
  BUILDER_CONFIGS = [builder_lib.RealDataConfig(
      name="default", description="LVS front end on 3 s (257x299).")]

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        features=builder_lib.features(cfg.audio),
        metadata=builder_lib.metadata(cfg.audio, gt_format="pixels"))

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    manual_dir = dl_manager.manual_dir
    if not os.path.isdir(manual_dir):
      raise builder_lib.missing_files_error("folder", manual_dir, LAYOUT, "no such directory")
    train, test, problems = builder_lib.scan_folder(manual_dir)
    options = builder_lib.resolve_options(cfg, box_space="original")
    skipped = self.info.metadata["skipped"]
    for problem in problems:
      if not options.skip_bad:
        raise builder_lib.missing_files_error("folder", manual_dir, LAYOUT, problem)
      skipped.append({"id": os.path.splitext(os.path.basename(problem.split(":")[0]))[0],
                      "error": problem})
      builder_lib.log(f"skipped: {problem}")
    if not train:
      raise builder_lib.missing_files_error("folder", manual_dir, LAYOUT,
                                            "no unannotated (training) example")
    splits = builder_lib.train_validation_tasks(train, cfg.num_validation)
    if test:
      splits["test"] = test
    return {name: self._generate_examples(tasks, options) for name, tasks in splits.items()}

  def _generate_examples(self, tasks, options):
    return builder_lib.examples(tasks, options, self.info.metadata["skipped"])

