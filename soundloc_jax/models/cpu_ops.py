"""Layers whose XLA CPU lowering is slow, written so that the CPU is fast.

Same parameters, same outputs and the same gradients (to float rounding) as
the plain ops; each `*_impl` switch takes "auto" (the default: the fast form
on the CPU backend, the plain op elsewhere, so the GPU and TPU path is
untouched), "plain" or "cpu".

Max-pool (`max_pool`). The gradient of XLA's `reduce_window` max is a
`select_and_scatter`, which XLA's CPU backend runs as a scalar loop: in the
LVS step at batch 16 it takes 287 ms for the audio stream's pool (16 x 129 x
150 x 64) against 19 ms for its forward (benchmarks/RESULTS.md). The "cpu"
form takes the maximum over the k*k shifted, strided views of the padded
input and keeps, per output, the index of the first view (row-major window
order) that attains it; the backward sends each output's gradient to that
one input through k*k strided pads. That is the rule of the plain op
(XLA's select keeps the current element on a tie, `ge`) and torch's (first
maximum), so on ties, which ReLU's zeros make common, the gradient goes to
the same element.

BatchNorm in training (`BatchNorm`). XLA differentiates BatchNorm's forward
op by op; its CPU backend then makes several passes over the activation
for the statistics' gradients (14.9 ms for a 16 x 56 x 56 x 64 BatchNorm +
ReLU, forward and backward). The "cpu" form keeps flax's forward
(`nnx.BatchNorm`: mean and E[x^2] - mean^2, clipped at 0, then `(x - mean)
* rsqrt(var + eps) * scale + bias`) and gives it the closed-form gradient
`dx = scale * r * (g - mean(g) - xhat * mean(g * xhat))`, with `dscale =
sum(g * xhat)`, `dbias = sum(g)` (3.9 ms). It is a subclass with the same
variables, so checkpoints of either load into the other. It applies in
training to float32 inputs with scale and bias, over every axis but the
last, without `axis_name` or a mask; every other call is flax's.

Convolutions with a tiny output (`Conv`). XLA's CPU convolution is as fast
as torch's on most ResNet-18 layers, but falls off a cliff on a few small
maps: a 3x3, 128 -> 128 convolution with a 2 x 4 output at batch 64 takes
11.7 ms forward against 1.0 ms for 3 x 4; at 512 channels and batch 16 it
takes 210 ms; the backward of the stride-2 convolution into that 2 x 4 map
takes 77 ms against 1.8 ms. The stamps recipes' audio stream (64 x 101
log-mel) ends on exactly that map. Where the output has at most
`SMALL_OUTPUT` (12) positions, the "cpu" form is im2col: the k*k shifted,
strided views concatenated along channels, times the kernel as a matrix,
which is at least as fast at every such size measured (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

IMPLS = ("auto", "plain", "cpu")


def resolve(impl: str) -> str:
  """"auto" -> "cpu" on the CPU backend, "plain" on others; a bad name fails
  with the list."""
  if impl not in IMPLS:
    raise ValueError(f"unknown CPU-op impl {impl!r}; available: {', '.join(IMPLS)}")
  if impl == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "plain"
  return impl


def _views(xp, k: int, s: int, out_hw):
  """The k*k strided views `[N, Ho, Wo, C]` of padded `xp`, row-major (ky, kx)."""
  n, _, _, c = xp.shape
  ho, wo = out_hw
  return [jax.lax.slice(xp, (0, ky, kx, 0), (n, ky + s * (ho - 1) + 1, kx + s * (wo - 1) + 1, c),
                        (1, s, s, 1))
          for ky in range(k) for kx in range(k)]


def _out_hw(h, w, k, s, p):
  return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1


def _pool_fwd(x, k, s, p):
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf)
  views = _views(xp, k, s, _out_hw(x.shape[1], x.shape[2], k, s, p))
  best, idx = views[0], jnp.zeros(views[0].shape, jnp.int8)
  for i, v in enumerate(views[1:], start=1):
    take = v > best  # strict: the first maximum keeps its place on a tie
    best = jnp.where(take, v, best)
    idx = jnp.where(take, jnp.int8(i), idx)
  return best, idx


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_cpu(x, k: int, s: int, p: int):
  return _pool_fwd(x, k, s, p)[0]


def _max_pool_cpu_fwd(x, k, s, p):
  best, idx = _pool_fwd(x, k, s, p)
  return best, (idx, x.shape)


def _max_pool_cpu_bwd(k, s, p, residuals, g):
  idx, shape = residuals
  _, h, w, _ = shape
  hp, wp = h + 2 * p, w + 2 * p
  ho, wo = g.shape[1], g.shape[2]
  zero = jnp.zeros((), g.dtype)
  dxp = None
  for i in range(k * k):
    ky, kx = divmod(i, k)
    part = jax.lax.pad(jnp.where(idx == i, g, zero), zero, (
        (0, 0, 0), (ky, hp - ky - s * (ho - 1) - 1, s - 1),
        (kx, wp - kx - s * (wo - 1) - 1, s - 1), (0, 0, 0)))
    dxp = part if dxp is None else dxp + part
  return (dxp[:, p:p + h, p:p + w, :],)


_max_pool_cpu.defvjp(_max_pool_cpu_fwd, _max_pool_cpu_bwd)


def max_pool(x, window: int, stride: int, pad: int, impl: str = "auto"):
  """Max-pool of NHWC `x` over `window x window`, `stride`, padded by `pad`
  with -inf on each side (every window must hold an input element: `pad <
  window`). `impl` as the module docstring."""
  if resolve(impl) == "cpu":
    return _max_pool_cpu(x, window, stride, pad)
  return nnx.max_pool(x, (window, window), strides=(stride, stride),
                      padding=((pad, pad), (pad, pad)))


def _bn_stats(x, axes):
  mean = x.mean(axes)
  return mean, jnp.maximum(0.0, (x * x).mean(axes) - mean * mean)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _bn_train(x, scale, bias, eps: float):
  """`(y, mean, var)` of training BatchNorm over every axis but the last; the
  statistics leave without a gradient (they feed the running averages)."""
  return _bn_train_fwd(x, scale, bias, eps)[0]


def _bn_train_fwd(x, scale, bias, eps):
  axes = tuple(range(x.ndim - 1))
  mean, var = _bn_stats(x, axes)
  r = jax.lax.rsqrt(var + eps)
  y = (x - mean) * (r * scale) + bias
  return (y, mean, var), (x, mean, r, scale)


def _bn_train_bwd(eps, residuals, cotangents):
  del eps
  x, mean, r, scale = residuals
  g = cotangents[0]
  axes = tuple(range(x.ndim - 1))
  xhat = (x - mean) * r
  dbias, dscale = g.sum(axes), (g * xhat).sum(axes)
  m = x.size // x.shape[-1]
  dx = (g - dbias / m - xhat * (dscale / m)) * (r * scale)
  return dx, dscale, dbias


_bn_train.defvjp(_bn_train_fwd, _bn_train_bwd)


class BatchNorm(nnx.BatchNorm):
  """`nnx.BatchNorm` (same arguments, variables and results) with the CPU
  form of the module docstring in training; `impl` as there."""

  def __init__(self, *args, impl: str = "auto", **kwargs):
    super().__init__(*args, **kwargs)
    resolve(impl)  # a bad name fails here
    self.impl = impl

  def __call__(self, x, use_running_average=None, *, mask=None):
    training = not (self.use_running_average if use_running_average is None
                    else use_running_average)
    fast = (training and mask is None and self.axis_name is None and self.use_fast_variance
            and self.axis in (-1, x.ndim - 1) and self.scale is not None
            and self.bias is not None and x.dtype == jnp.float32
            and self.dtype in (None, jnp.float32) and resolve(self.impl) == "cpu")
    if not fast:
      return super().__call__(x, use_running_average, mask=mask)
    y, mean, var = _bn_train(x, self.scale[...], self.bias[...], self.epsilon)
    stop = jax.lax.stop_gradient
    self.mean[...] = stop(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
    self.var[...] = stop(self.momentum * self.var[...] + (1 - self.momentum) * var)
    return y


SMALL_OUTPUT = 12  # output positions at or below which "cpu" convolves by im2col


def conv_im2col(x, kernel, stride: int, pad: int):
  """NHWC `x` convolved with a square HWIO `kernel` (`stride`, zero `pad` on
  each side) as one matmul over the k*k shifted views (`_views`):
  `lax.conv_general_dilated`'s result to float rounding."""
  k, _, cin, cout = kernel.shape
  ho, wo = _out_hw(x.shape[1], x.shape[2], k, stride, pad)
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
  views = _views(xp, k, stride, (ho, wo))
  cols = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  return (cols.reshape(-1, k * k * cin) @ kernel.reshape(k * k * cin, cout)).reshape(
      x.shape[0], ho, wo, cout)


class Conv(nnx.Conv):
  """`nnx.Conv` (same arguments and variables) for ResNet's square kernels
  with an integer `stride` and symmetric zero padding `pad` (or "VALID" with
  `pad=0`), convolving tiny outputs by `conv_im2col` under the "cpu" form
  (module docstring). Other calls are flax's."""

  def __init__(self, cin: int, cout: int, kernel: int, *, stride: int, pad: int,
               impl: str = "auto", padding=None, **kwargs):
    super().__init__(cin, cout, (kernel, kernel), strides=stride,
                     padding=((pad, pad), (pad, pad)) if padding is None else padding, **kwargs)
    resolve(impl)
    self.impl, self.stride, self.pad = impl, stride, pad if padding is None else 0

  def __call__(self, x):
    ho, wo = _out_hw(x.shape[1], x.shape[2], self.kernel_size[0], self.stride, self.pad)
    if (ho * wo > SMALL_OUTPUT or self.use_bias or x.dtype != jnp.float32
        or self.dtype not in (None, jnp.float32) or resolve(self.impl) != "cpu"):
      return super().__call__(x)
    return conv_im2col(x, self.kernel[...], self.stride, self.pad)
