"""Shared test setup: a small demo dataset, built once per session, and a
persistent XLA cache so the suite compiles each step shape once."""

import os
import sys

# Reduced demo splits for the suite (must be set before the builder is imported).
os.environ.setdefault("SOUNDLOC_AV_DIGITS_SIZES", "768,128,128")
os.environ.setdefault("SOUNDLOC_XLA_CACHE",
                      os.path.join(os.path.expanduser("~"), ".cache", "soundloc_jax", "xla"))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
  """data_dir holding the reduced av_digits build (built on first use)."""
  from soundloc_jax import demo_data
  data_dir = os.environ.get("SOUNDLOC_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
  demo_data.ensure_built(data_dir)
  return data_dir


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache():
  from soundloc_jax import distributed
  distributed.enable_compilation_cache()
