"""EZ-VSL's object-guided localisation (evaluation/objectness.py): the resize
and the mix against loop references, the known cases (alpha 0 / 1, constant
maps), and S_obj of the imported ImageNet classifier against the reference
model's head map (tests/fixtures/make_efficientnet_fixture.py)."""

import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from soundloc_jax.errors import ConfigError
from soundloc_jax.evaluation import objectness
from soundloc_jax.tools import import_efficientnet_lite0

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _resize_loop(m, size):
  """Bilinear, corners aligned, one output pixel at a time (float64)."""
  h, w = m.shape
  out = np.zeros((size, size))
  for i in range(size):
    for j in range(size):
      y, x = i * (h - 1) / (size - 1), j * (w - 1) / (size - 1)
      y0, x0 = min(int(np.floor(y)), h - 1), min(int(np.floor(x)), w - 1)
      y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
      fy, fx = y - y0, x - x0
      out[i, j] = ((1 - fy) * (1 - fx) * m[y0, x0] + (1 - fy) * fx * m[y0, x1]
                   + fy * (1 - fx) * m[y1, x0] + fy * fx * m[y1, x1])
  return out


def _norm(m):
  return (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else m


def test_resize_matches_the_loop_reference():
  maps = np.random.default_rng(0).normal(size=(2, 4, 6))
  got = np.asarray(objectness.resize_align_corners(maps, 13))
  for b in range(2):
    np.testing.assert_allclose(got[b], _resize_loop(maps[b], 13), atol=1e-5)
  # Corners are the input's corners.
  np.testing.assert_allclose(got[:, 0, 0], maps[:, 0, 0], atol=1e-6)
  np.testing.assert_allclose(got[:, -1, -1], maps[:, -1, -1], atol=1e-6)


def test_the_mix_matches_the_loop_reference_and_its_known_cases():
  rng = np.random.default_rng(1)
  av, obj = rng.normal(size=(3, 8, 8)), rng.random((3, 4, 4))
  got = np.asarray(objectness.ogl_combine(av, obj, 0.4, 16))
  for b in range(3):
    ref = _norm(0.4 * _norm(_resize_loop(av[b], 16)) + 0.6 * _norm(_resize_loop(obj[b], 16)))
    np.testing.assert_allclose(got[b], ref, atol=1e-5)
  only_av = np.asarray(objectness.ogl_combine(av, obj, 1.0, 16))
  np.testing.assert_allclose(only_av[0], _norm(_resize_loop(av[0], 16)), atol=1e-5)
  only_obj = np.asarray(objectness.ogl_combine(av, obj, 0.0, 16))
  np.testing.assert_allclose(only_obj[1], _norm(_resize_loop(obj[1], 16)), atol=1e-5)
  # A constant map (silence, a blank image) gives a defined, finite map.
  flat = np.asarray(objectness.ogl_combine(np.zeros((1, 8, 8)), np.ones((1, 4, 4)), 0.4, 16))
  assert np.isfinite(flat).all()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("efficientnet_lite0"))
  assert import_efficientnet_lite0.main(["--out", out]) == 0
  return out


def test_objectness_is_the_mean_absolute_head_map_of_the_reference(weights_dir):
  with np.load(os.path.join(FIXTURES, "efficientnet_lite0_outputs.npz")) as npz:
    image, head = npz["image"], npz["head"]
  got = np.asarray(objectness.objectness_fn(weights_dir)(jnp.asarray(image)))
  assert got.shape == (3, 4, 4)
  np.testing.assert_allclose(got, np.abs(head).mean(-1), atol=1e-3)


def test_with_ogl_replaces_only_the_response(weights_dir):
  rng = np.random.default_rng(2)
  image = jnp.asarray(rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
  response = jnp.asarray(rng.normal(size=(2, 4, 4)), jnp.float32)
  features = jnp.ones((2, 4, 4, 8))
  predict = lambda p, b, im, sp: {"response": response, "visual_features": features}  # noqa: E731
  cfg = ml_collections.ConfigDict({"weights": weights_dir, "alpha": 0.4})
  out = objectness.with_ogl(predict, cfg, 32)(None, None, image, None)
  assert out["response"].shape == (2, 32, 32)
  assert out["visual_features"] is features
  obj = objectness.objectness_fn(weights_dir)(image)
  np.testing.assert_allclose(out["response"], objectness.ogl_combine(response, obj, 0.4, 32),
                             atol=1e-6)
  with pytest.raises(ConfigError, match="alpha"):
    objectness.with_ogl(predict, ml_collections.ConfigDict({"weights": weights_dir,
                                                            "alpha": 1.5}), 32)
  with pytest.raises(ConfigError, match="config.eval.ogl.weights"):
    objectness.objectness_fn(os.path.dirname(weights_dir))
