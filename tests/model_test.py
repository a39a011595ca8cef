"""Model contract: shapes, normalisation, response map, BatchNorm modes, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from soundloc_jax.models import av_model, resnet


def _inputs(batch=3, size=64, freq=64, time=63, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  spec = rng.normal(size=(batch, freq, time)).astype(np.float32)
  return jnp.asarray(image), jnp.asarray(spec)


def test_output_contract():
  model = av_model.AVModel(width=8, rngs=nnx.Rngs(0))
  image, spec = _inputs()
  out = model(image, spec)
  assert out["visual_features"].shape == (3, 4, 4, 64)
  assert out["audio_embedding"].shape == (3, 64)
  assert out["response"].shape == (3, 4, 4)
  for key in out:
    assert out[key].dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(out["visual_features"], axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(out["audio_embedding"], axis=-1), 1.0, atol=1e-5)
  # The response is the cosine of the audio embedding with every patch.
  expected = np.einsum("bhwd,bd->bhw", np.asarray(out["visual_features"]),
                       np.asarray(out["audio_embedding"]))
  np.testing.assert_allclose(out["response"], expected, atol=1e-5)
  assert np.all(np.abs(out["response"]) <= 1 + 1e-5)


@pytest.mark.parametrize("stride,expected", [(1, 14), (2, 7)])
def test_layer4_stride_sets_map_size(stride, expected):
  net = resnet.ResNet18(3, width=4, layer4_stride=stride, rngs=nnx.Rngs(0))
  out = net(jnp.zeros((1, 224, 224, 3)))
  assert out.shape == (1, expected, expected, 32)


def test_resnet18_has_torchvision_parameter_count():
  # torchvision resnet18 without fc: 11,176,512 params (conv + bn weights).
  net = resnet.ResNet18(3, width=64, rngs=nnx.Rngs(0))
  params = nnx.state(net, nnx.Param)
  assert sum(x.size for x in jax.tree.leaves(params)) == 11_176_512


def test_batchnorm_train_updates_stats_and_eval_uses_them():
  model = av_model.AVModel(width=4, rngs=nnx.Rngs(0))
  image, spec = _inputs()
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  model.eval()
  eval_out = model(image, spec)["response"]
  after_eval = nnx.state(model, nnx.BatchStat)
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, after_eval))
  model.train()
  train_out = model(image, spec)["response"]
  after_train = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), before, after_train))
  assert any(changed)
  assert not np.allclose(eval_out, train_out)
  # torch momentum 0.1: new running mean = 0.9 * old + 0.1 * batch mean.
  bn = model.visual.bn1
  x = model.visual.conv1(av_model.normalize_image(image))
  batch_mean = np.asarray(jnp.mean(x, axis=(0, 1, 2)))
  np.testing.assert_allclose(bn.mean[...], 0.1 * batch_mean, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  model = av_model.AVModel(width=4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  image, spec = _inputs(batch=2)
  out = model(image, spec)
  assert all(v.dtype == jnp.float32 for v in out.values())
  params = nnx.state(model, nnx.Param)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  assert np.all(np.isfinite(out["response"]))


def _reflect_conv_reference(x, kernel, stride):
  """Loop reference of a reflect-padded convolution: `x` [H, W, Cin], `kernel`
  [k, k, Cin, Cout]; each tap outside the image reads the pixel mirrored at
  the edge (index -i, or 2(n-1) - i), the edge pixel itself not repeated."""
  k = kernel.shape[0]
  pad = k // 2
  h, w = x.shape[:2]

  def mirror(i, n):
    return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

  out_h = (h + 2 * pad - k) // stride + 1
  out_w = (w + 2 * pad - k) // stride + 1
  out = np.zeros((out_h, out_w, kernel.shape[-1]))
  for oy in range(out_h):
    for ox in range(out_w):
      for dy in range(k):
        for dx in range(k):
          y = mirror(oy * stride - pad + dy, h)
          xx = mirror(ox * stride - pad + dx, w)
          out[oy, ox] += x[y, xx] @ kernel[dy, dx]
  return out


@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (7, 2)])
def test_reflect_padding_matches_a_loop_reference(kernel, stride):
  conv = resnet._conv(2, 3, kernel, stride, jnp.float32, nnx.Rngs(0), padding="reflect")
  x = np.random.default_rng(0).normal(size=(1, 9, 8, 2)).astype(np.float32)
  expected = _reflect_conv_reference(x[0].astype(np.float64), np.asarray(conv.kernel[...]), stride)
  np.testing.assert_allclose(np.asarray(conv(jnp.asarray(x)))[0], expected, rtol=1e-4, atol=1e-5)


def test_reflect_padding_gives_no_edge_signal():
  # A uniform image has no edges: with reflect padding every cell of the
  # map sees the same input and gets the same features; with zero padding
  # the border cells differ (the padding marks the image edge).
  image = jnp.full((2, 96, 96, 3), 120, jnp.uint8)
  maps = {}
  for padding in resnet.PADDINGS:
    model = av_model.AVModel(width=4, visual_padding=padding, rngs=nnx.Rngs(0))
    model.eval()
    features = np.asarray(model.visual(av_model.normalize_image(image)))
    maps[padding] = np.abs(features - features[:, 3:4, 3:4]).max()
  assert maps["reflect"] < 1e-5
  assert maps["zeros"] > 1e-2
  # Same parameters either way, so weights port between the two.
  shapes = [jax.tree.map(np.shape, nnx.state(resnet.ResNet18(3, width=4, padding=p,
                                                             rngs=nnx.Rngs(0)), nnx.Param))
            for p in resnet.PADDINGS]
  assert shapes[0] == shapes[1]


def test_unknown_visual_padding_names_the_key():
  from soundloc_jax.errors import ConfigError
  with pytest.raises(ConfigError, match="config.model.visual_padding.*'circular'"):
    av_model.AVModel(width=4, visual_padding="circular", rngs=nnx.Rngs(0))
