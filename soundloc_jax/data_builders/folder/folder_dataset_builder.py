"""`folder`: any audio-visual localization data a user brings, as a directory.

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
    train/                                 optional: more training examples, the same
                                           files; an <id>.json here is NOT read
                                           (training is unannotated)
    test/, test_<name>/                    optional: annotated test splits named
                                           after the folder (`test`, `test_unseen`,
                                           ...); every example needs its <id>.json

Ids with a `.json` directly in manual_dir form the `test` split (then there
must be no `test/` folder); annotated splits get boxes converted through the
test view's resize + centre crop (`gt_format="pixels"`). Unannotated ids of
manual_dir and every id of `train/` are split into `train` and a held-out
unannotated `validation` (min(num_validation, max(1, n // 10)) ids by SHA-1
of the id, see `builder_lib.validation_ids`). So a dataset whose examples
all carry boxes is built by putting the training ones in `train/`; with no
training example at all the build stops with an error saying so. Ids are
unique across the whole layout (a repeated id is an error naming both
files). Without any annotation there is no test split. Every id needs a
sound; an id with neither an image nor a video is an error naming the file
(or skipped and counted with `skip_bad`). Other subfolders and files are
ignored. See `soundloc_jax/builder_lib.py` for what is stored.
"""

from __future__ import annotations

import dataclasses
import os
import re

from soundloc_jax import builder_lib

LAYOUT = """<id>.jpg|.jpeg|.png (frame, optional with a video) + <id>.wav|.flac|.mp3|.mp4|.mkv|...
(sound) [+ <id>.json {"boxes": [[x0, y0, x1, y1], ...]} in original-image pixels -> test
split] in manual_dir; optional train/ (training, .json not read) and test/, test_<name>/
(annotated splits, every id with its .json) subfolders"""

TRAIN_DIR = "train"
TEST_DIR = re.compile(r"test(_[a-z0-9_]+)?")


def scan_layout(manual_dir: str):
  """`(training tasks, {split: annotated tasks}, problems)` of a folder layout
  (see the module docstring). A layout mistake (an annotated `test` split in
  two places, a repeated id) raises `DatasetError`; bad examples become
  `problems` (one-line strings naming the file)."""
  train, flat_test, problems = builder_lib.scan_folder(manual_dir)
  annotated = {"test": flat_test} if flat_test else {}
  subdirs = sorted(d for d in os.listdir(manual_dir) if os.path.isdir(os.path.join(manual_dir, d)))
  if TRAIN_DIR in subdirs:
    more, boxed, bad = builder_lib.scan_folder(os.path.join(manual_dir, TRAIN_DIR))
    train += more + [dataclasses.replace(t, test=False, gt_boxes=()) for t in boxed]
    problems += bad
  for name in subdirs:
    if not TEST_DIR.fullmatch(name):
      continue
    folder = os.path.join(manual_dir, name)
    if name in annotated:
      raise builder_lib.missing_files_error(
          "folder", manual_dir, LAYOUT, f"annotated ids both in manual_dir itself and in {folder}/ "
          "(two sources for split 'test'): keep one")
    unboxed, boxed, bad = builder_lib.scan_folder(folder)
    problems += bad + [f"{t.audio}: no {t.id}.json next to it (every example in {name}/ is "
                       "annotated)" for t in unboxed]
    if boxed:
      annotated[name] = boxed
  seen: dict[str, str] = {}
  for split, tasks in [("train", train)] + sorted(annotated.items()):
    for t in tasks:
      where = t.audio or t.video
      if t.id in seen:
        raise builder_lib.missing_files_error(
            "folder", manual_dir, LAYOUT, f"id {t.id!r} twice ({seen[t.id]} and {where}); ids "
            "must be unique across manual_dir, train/ and the test folders")
      seen[t.id] = where
  return train, annotated, problems


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
    train, annotated, problems = scan_layout(manual_dir)
    options = builder_lib.resolve_options(cfg, box_space="original")
    builder_lib.skip_problems(problems, "folder", manual_dir, LAYOUT, options,
                              self.info.metadata["skipped"])
    if not train:
      raise builder_lib.missing_files_error(
          "folder", manual_dir, LAYOUT,
          "no training example (every example has an <id>.json, so all are test examples): put the "
          f"training ones in {os.path.join(manual_dir, TRAIN_DIR)}/ (their .json is not read) or "
          "remove their .json")
    splits = builder_lib.train_validation_tasks(train, cfg.num_validation)
    splits.update(annotated)
    return {name: self._generate_examples(tasks, options) for name, tasks in splits.items()}

