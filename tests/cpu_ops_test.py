"""models.cpu_ops: the CPU forms of max-pool and training BatchNorm give what
the plain ops give (values, gradients, running statistics, tie rule), and
a ResNet-18 built with them loads the plain one's state."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from soundloc_jax import checkpointing, train
from soundloc_jax.configs import default
from soundloc_jax.errors import ConfigError
from soundloc_jax.models import av_model, cpu_ops
from soundloc_jax.models.resnet import ResNet18
from tests.helpers import tiny_config


def _tied(shape, seed=0):
  """ReLU'd values on a coarse grid: many ties inside every window."""
  x = np.random.default_rng(seed).standard_normal(shape)
  return jnp.asarray(np.maximum(np.round(x * 2) / 2, 0), jnp.float32)


def _loop_pool_grad(x, g, k, s, p):
  """float64 loop: each output's gradient to the first maximum of its window
  in row-major order (torch's and XLA's rule)."""
  x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
  n, h, w, c = x.shape
  dx = np.zeros_like(x)
  for b, i, j, ch in itertools.product(range(n), range(g.shape[1]), range(g.shape[2]), range(c)):
    best, at = -np.inf, None
    for ky, kx in itertools.product(range(k), range(k)):
      y, z = i * s + ky - p, j * s + kx - p
      if 0 <= y < h and 0 <= z < w and x[b, y, z, ch] > best:
        best, at = x[b, y, z, ch], (y, z)
    dx[b, at[0], at[1], ch] += g[b, i, j, ch]
  return dx


@pytest.mark.parametrize("shape,k,s,p", [((2, 9, 11, 3), 3, 2, 1), ((1, 8, 8, 2), 3, 2, 1),
                                          ((2, 7, 6, 2), 2, 2, 0), ((1, 10, 9, 2), 3, 1, 1)])
def test_max_pool_matches_the_plain_op_and_the_first_maximum_rule(shape, k, s, p):
  x = _tied(shape)
  plain = lambda v: cpu_ops.max_pool(v, k, s, p, "plain")  # noqa: E731
  fast = lambda v: cpu_ops.max_pool(v, k, s, p, "cpu")  # noqa: E731
  y = plain(x)
  np.testing.assert_array_equal(fast(x), y)
  g = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape), jnp.float32)
  want = _loop_pool_grad(x, g, k, s, p)
  np.testing.assert_allclose(jax.vjp(plain, x)[1](g)[0], want, atol=1e-6)
  np.testing.assert_allclose(jax.jit(lambda v, g: jax.vjp(fast, v)[1](g)[0])(x, g), want,
                             atol=1e-6)


def _bn_pair(channels=5, momentum=0.9, eps=1e-5):
  plain = nnx.BatchNorm(channels, momentum=momentum, epsilon=eps, rngs=nnx.Rngs(0))
  fast = cpu_ops.BatchNorm(channels, momentum=momentum, epsilon=eps, rngs=nnx.Rngs(0),
                           impl="cpu")
  for bn in (plain, fast):  # non-trivial scale and bias
    bn.scale[...] = jnp.linspace(0.5, 2.0, channels)
    bn.bias[...] = jnp.linspace(-1.0, 1.0, channels)
  return plain, fast


def test_batchnorm_in_training_matches_flax_values_gradients_and_running_stats():
  plain, fast = _bn_pair()
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 6, 7, 5)) * 3 + 1, jnp.float32)
  g = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape), jnp.float32)

  def grads(bn):
    def loss(bn, x):
      return (jax.nn.relu(bn(x)) * g).sum()
    return nnx.grad(loss, argnums=(0, 1))(bn, x)

  (dplain, dx_plain), (dfast, dx_fast) = grads(plain), grads(fast)
  np.testing.assert_allclose(dx_fast, dx_plain, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dfast.scale[...], dplain.scale[...], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dfast.bias[...], dplain.bias[...], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(fast(x), plain(x), atol=1e-5)  # also moves the running stats
  np.testing.assert_allclose(fast.mean[...], plain.mean[...], atol=1e-6)
  np.testing.assert_allclose(fast.var[...], plain.var[...], rtol=1e-6)
  assert float(jnp.abs(fast.mean[...]).max()) > 0.1  # they did move
  # eval mode is flax's own path: the same numbers
  np.testing.assert_allclose(fast(x, use_running_average=True),
                             plain(x, use_running_average=True), atol=1e-6)


def test_batchnorm_gradient_against_a_float64_loop():
  _, fast = _bn_pair(channels=2, eps=1e-3)
  x = np.random.default_rng(2).standard_normal((3, 4, 2))
  g = np.random.default_rng(3).standard_normal(x.shape)
  dx = nnx.grad(lambda bn, v: (bn(v) * jnp.asarray(g, jnp.float32)).sum(), argnums=1)(
      fast, jnp.asarray(x, jnp.float32))
  scale = np.linspace(0.5, 2.0, 2)
  want = np.zeros_like(x)
  eps_fd = 1e-6
  for idx in itertools.product(*map(range, x.shape)):  # central differences in float64
    def f(v):
      mean = v.mean(axis=(0, 1))
      var = (v * v).mean(axis=(0, 1)) - mean ** 2
      return ((v - mean) / np.sqrt(var + 1e-3) * scale * g).sum()
    hi, lo = x.copy(), x.copy()
    hi[idx] += eps_fd
    lo[idx] -= eps_fd
    want[idx] = (f(hi) - f(lo)) / (2 * eps_fd)
  np.testing.assert_allclose(dx, want, rtol=1e-3, atol=1e-4)


def test_resnet_with_cpu_ops_equals_the_plain_one_and_loads_its_state():
  x = _tied((2, 40, 36, 1))
  plain = ResNet18(1, width=8, rngs=nnx.Rngs(0), ops_impl="plain")
  fast = ResNet18(1, width=8, rngs=nnx.Rngs(1), ops_impl="cpu")
  state = nnx.state(plain)
  assert jax.tree.structure(state) == jax.tree.structure(nnx.state(fast))
  nnx.update(fast, state)  # a checkpoint of either loads into the other

  def loss(m, x):
    y = m(x)
    return (y * y).mean()

  grads = [jax.tree.leaves(nnx.state(nnx.jit(nnx.grad(loss))(m, x), nnx.Param))
           for m in (plain, fast)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5 * float(jnp.abs(a).max()) + 1e-8)
  np.testing.assert_allclose(fast(x), plain(x), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(fast.bn1.mean[...], plain.bn1.mean[...], atol=1e-6)


def test_auto_is_plain_off_the_cpu_and_bad_names_are_named(monkeypatch):
  assert cpu_ops.resolve("auto") == "cpu"  # the suite runs on the CPU backend
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert cpu_ops.resolve("auto") == "plain"
  with pytest.raises(ValueError, match="unknown CPU-op impl 'fast'; available: auto, plain, cpu"):
    cpu_ops.resolve("fast")
  with pytest.raises(ValueError, match="'fast'"):
    ResNet18(1, width=8, rngs=nnx.Rngs(0), ops_impl="fast")
  config = default.get_config()
  config.model.cpu_ops = "fast"
  with pytest.raises(ConfigError, match="config.model.cpu_ops: unknown 'fast'"):
    av_model.build_model(config.model)


@pytest.mark.parametrize("shape,k,cout,stride,pad", [
    ((3, 2, 4, 8), 3, 6, 1, 1), ((3, 4, 7, 8), 3, 6, 2, 1), ((2, 4, 7, 5), 1, 4, 2, 0),
    ((2, 9, 8, 2), 7, 3, 2, 3), ((2, 3, 3, 4), 3, 5, 1, 0)])
def test_im2col_convolution_equals_xla_values_and_gradients(shape, k, cout, stride, pad):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((k, k, shape[3], cout)), jnp.float32)
  xla = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
      x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  fast = lambda x, w: cpu_ops.conv_im2col(x, w, stride, pad)  # noqa: E731
  y = xla(x, w)
  np.testing.assert_allclose(fast(x, w), y, rtol=1e-5, atol=1e-5)
  g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  for a, b in zip(jax.vjp(fast, x, w)[1](g), jax.vjp(xla, x, w)[1](g)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_conv_takes_im2col_only_for_tiny_outputs(monkeypatch):
  calls = []
  monkeypatch.setattr(cpu_ops, "conv_im2col", lambda *a: calls.append(a[0].shape) or 0)
  conv = cpu_ops.Conv(4, 4, 3, stride=1, pad=1, use_bias=False, rngs=nnx.Rngs(0), impl="cpu")
  conv(jnp.zeros((1, 3, 4, 4)))   # 12 output positions: im2col
  conv(jnp.zeros((1, 4, 4, 4)))   # 16: XLA's convolution
  assert calls == [(1, 3, 4, 4)]
  plain = cpu_ops.Conv(4, 4, 3, stride=1, pad=1, use_bias=False, rngs=nnx.Rngs(0), impl="plain")
  plain(jnp.zeros((1, 2, 2, 4)))
  assert len(calls) == 1


def test_a_run_from_before_cpu_ops_resumes_with_them(demo_data_dir, tmp_path):
  """A workdir trained with the plain ops, whose config.json predates the
  field, resumes under the default ("auto": the CPU forms here) to the end."""
  train.train_and_evaluate(tiny_config(demo_data_dir, max_steps=2, **{"model.cpu_ops": "plain"}),
                           str(tmp_path))
  path = tmp_path / "config.json"
  recorded = json.loads(path.read_text())
  del recorded["model"]["cpu_ops"]  # as written before the field existed
  path.write_text(json.dumps(recorded))
  train.train_and_evaluate(tiny_config(demo_data_dir, max_steps=4), str(tmp_path))
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.latest_step() == 4
  ckpt.close()
