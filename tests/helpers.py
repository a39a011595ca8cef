"""Helpers shared by the test files (imported as `from tests import helpers`;
media files are written by `tests/media_fixtures.py`)."""

import importlib
import math
import os
import sys

import jax
import numpy as np

from soundloc_jax.configs import iterative


def import_script(name: str):
  """The module `scripts/<name>.py` (the scripts folder is not a package)."""
  folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
  sys.path.insert(0, folder)
  try:
    return importlib.import_module(name)
  finally:
    sys.path.pop(0)


def set_fields(config, overrides: dict):
  """`config` with dotted `overrides` (`{"method.tau": 0.2}`) set in place."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def neighbour_demo_config(config, data_dir, *, log_every_steps: int, **overrides):
  """`config` on the suite's reduced demo build for the neighbour-batch methods'
  trainer tests (HardPos, ICL x HardPos): width 4, batch 16, 1 epoch, 2
  overlays; `overrides` as dotted keys."""
  config.dataset.data_dir = data_dir
  config.model.width = 4
  config.batch_size = 16
  config.num_epochs = 1
  config.log_every_steps = log_every_steps
  config.eval.batch_size = 64
  config.eval.num_overlays = 2
  return set_fields(config, overrides)


def tiny_config(data_dir, **overrides):
  """ICL on the suite's reduced demo build: a width-4 model, batch 32, 3 epochs
  (the first without a teacher; the teacher guard is off so that epochs 1-2
  always exercise the teacher, whatever this tiny model learned: the guard
  has its own tests); `overrides` as dotted keys."""
  c = iterative.get_config("")
  c.dataset.data_dir = data_dir
  c.model.width = 4
  c.batch_size = 32
  c.num_epochs = 3
  c.method.init_epochs = 1
  c.method.teacher_guard = False
  c.log_every_steps = 4
  c.eval.batch_size = 64
  c.eval.num_overlays = 4
  return set_fields(c, overrides)


def assert_trees_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def unit_rows(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def correlated_features(seed, B, h, w, d):
  """float32 `(visual [B, h, w, d], audio [B, d])`, L2-normalised, whose patches
  correlate with their own sample's audio at random strengths (so soft-mask
  thresholds around 0.4-0.65 are exercised)."""
  rng = np.random.default_rng(seed)
  a = unit_rows(rng.normal(size=(B, d)))
  strength = rng.uniform(0.0, 3.0, size=(B, h, w, 1))
  V = unit_rows(strength * a[:, None, None, :] + rng.normal(size=(B, h, w, d)) / math.sqrt(d))
  return V.astype(np.float32), a.astype(np.float32)
