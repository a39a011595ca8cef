"""`music_synthetic`: ICL's MUSIC-Synthetic setting as a generic "grid" format.

MUSIC-Synthetic pairs a 2x2 grid of four instrument frames with the mixture
of two of their 1-second sounds (25k training pairs, 455 annotated test
pairs). This builder reads grids the user has composed (or the release's
files renamed to this layout); `manual_dir` holds::

  manual_dir/
    train/<id>.jpg|png + <id>.wav|flac|...     a grid image and its mixed sound
    test/<id>.jpg|png  + <id>.wav|flac|...     the same, plus
    test/<id>.json                             {"boxes": [[x0, y0, x1, y1], ...]}: the
                                               sounding cells, pixels of the grid
                                               image, half-open

Splits: `train` and an unannotated held-out `validation` from train/
(min(num_validation = 500, max(1, n // 10)) ids by SHA-1), `test` from test/
(boxes converted to the 224 test view, `gt_format="pixels"`; every test id
needs its .json). The default front end is the LVS PSD transform on ICL's
1 s at 16 kHz (257x98). Bad or missing files: as every builder (error naming
the file, or `skip_bad`).
"""

from __future__ import annotations

import dataclasses
import os

from soundloc_jax import builder_lib

LAYOUT = """train/<id>.jpg|png + <id>.wav|flac|... (grid image + mixed 1-s sound) and test/ with
the same plus <id>.json {"boxes": [[x0, y0, x1, y1], ...]} (sounding cells, grid-image pixels)"""
MUSIC_AUDIO = dict(builder_lib.DEFAULT_AUDIO, clip_seconds=1.0)


class Builder(builder_lib.RealDataBuilder):
  """Pre-composed 2x2 instrument grids (see the module docstring)."""

  GT_FORMAT = "pixels"
  MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir holds " + LAYOUT
  BUILDER_CONFIGS = [builder_lib.RealDataConfig(
      name="default", audio=dict(MUSIC_AUDIO), description="LVS front end on 1 s (257x98).")]

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    manual_dir = os.fspath(dl_manager.manual_dir)
    folders = {s: os.path.join(manual_dir, s) for s in ("train", "test")}
    for split, folder in folders.items():
      if not os.path.isdir(folder):
        raise builder_lib.missing_files_error("music_synthetic", manual_dir, LAYOUT,
                                              f"no {split}/ folder")
    options = builder_lib.resolve_options(cfg, box_space="original")
    train, annotated, train_problems = builder_lib.scan_folder(folders["train"])
    # Boxes are not used for training: a train/<id>.json is ignored.
    train += [dataclasses.replace(t, test=False, gt_boxes=()) for t in annotated]
    unannotated, test, test_problems = builder_lib.scan_folder(folders["test"])
    problems = train_problems + test_problems + [
        f"{t.image or t.video}: test grid without {t.id}.json boxes" for t in unannotated]
    builder_lib.skip_problems(problems, "music_synthetic", manual_dir, LAYOUT, options,
                              self.info.metadata["skipped"])
    splits = builder_lib.train_validation_tasks(train, cfg.num_validation)
    splits["test"] = test
    return {name: self._generate_examples(t, options) for name, t in splits.items()}
