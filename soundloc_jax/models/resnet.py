"""ResNet-18 in Flax NNX, torchvision topology, NHWC.

The same module serves the visual stream (3-channel image, layer4 stride 1 by
default so a 224 input gives a 14x14 map, as LVS does) and the audio stream
(1-channel spectrogram treated as an image). Padding is explicit (torch's
`padding=k//2`, max-pool padded with -inf) and BatchNorm uses torch's
semantics (momentum 0.1 == flax momentum 0.9, eps 1e-5), so torchvision
weights can be ported parameter by parameter. Parameter names mirror
torchvision (`conv1`, `bn1`, `layer1.0.conv1`, `downsample_conv`, ...).

`ops_impl` picks the form of the max-pool, of BatchNorm in training and of
convolutions with a tiny output
(`models.cpu_ops`): "auto" (the default) is the fast one on the CPU backend
and flax's / XLA's elsewhere; the parameters and results are the same.

`width` is the base channel count (64 in the papers; the demo uses a narrow
network); `dtype` is the compute dtype (params stay float32).

`padding` is how every convolution pads its input: "zeros" (torch's, the
default) or "reflect" (the input mirrored at its edge, without repeating the
edge pixel, as torch's `padding_mode="reflect"`). Zero padding tells a deep
layer where the image edge is: on a 6x6 map every cell's receptive field
reaches past it, the outer ring's the most. The max-pool keeps its -inf
padding (it adds no values). The parameters are the same in both modes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from soundloc_jax.models import cpu_ops

# torchvision initialises convolutions with kaiming_normal(fan_out, relu).
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
PADDINGS = ("zeros", "reflect")


class _ReflectConv(cpu_ops.Conv):
  """An unpadded convolution applied to its input reflect-padded by `pad`
  (NHWC); its parameters are nnx.Conv's, under the same names."""

  def __init__(self, *args, reflect: int, **kwargs):
    super().__init__(*args, pad=0, padding="VALID", **kwargs)
    self.reflect = reflect

  def __call__(self, x):
    p = self.reflect
    return super().__call__(jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect"))


def _conv(cin, cout, kernel, stride, dtype, rngs, padding="zeros", ops_impl="auto"):
  pad = kernel // 2
  kwargs = dict(stride=stride, use_bias=False, dtype=dtype, kernel_init=_conv_init, rngs=rngs,
                impl=ops_impl)
  if padding == "reflect" and pad:
    return _ReflectConv(cin, cout, kernel, reflect=pad, **kwargs)
  return cpu_ops.Conv(cin, cout, kernel, pad=pad, **kwargs)


def _bn(channels, dtype, rngs, ops_impl="auto"):
  return cpu_ops.BatchNorm(channels, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs,
                           impl=ops_impl)


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions with a residual; 1x1 projection when the shape changes."""

  def __init__(self, cin: int, cout: int, stride: int, *, dtype, rngs: nnx.Rngs,
               padding: str = "zeros", ops_impl: str = "auto"):
    self.conv1 = _conv(cin, cout, 3, stride, dtype, rngs, padding, ops_impl)
    self.bn1 = _bn(cout, dtype, rngs, ops_impl)
    self.conv2 = _conv(cout, cout, 3, 1, dtype, rngs, padding, ops_impl)
    self.bn2 = _bn(cout, dtype, rngs, ops_impl)
    if stride != 1 or cin != cout:
      self.downsample_conv = _conv(cin, cout, 1, stride, dtype, rngs, ops_impl=ops_impl)
      self.downsample_bn = _bn(cout, dtype, rngs, ops_impl)
    else:
      self.downsample_conv = None
      self.downsample_bn = None

  def __call__(self, x):
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x
    if self.downsample_conv is not None:
      shortcut = self.downsample_bn(self.downsample_conv(x))
    return jax.nn.relu(y + shortcut)


class ResNet18(nnx.Module):
  """ResNet-18 trunk without the classifier: returns the layer4 feature map."""

  def __init__(self, in_channels: int, *, width: int = 64, layer4_stride: int = 2,
               padding: str = "zeros", dtype=jnp.float32, rngs: nnx.Rngs,
               ops_impl: str = "auto"):
    if padding not in PADDINGS:
      raise ValueError(f"ResNet18: unknown padding {padding!r}; available: {', '.join(PADDINGS)}")
    self.dtype = dtype
    self.ops_impl = ops_impl
    self.conv1 = _conv(in_channels, width, 7, 2, dtype, rngs, padding, ops_impl)
    self.bn1 = _bn(width, dtype, rngs, ops_impl)
    widths = (width, 2 * width, 4 * width, 8 * width)
    strides = (1, 2, 2, layer4_stride)
    layers = []
    cin = width
    for cout, stride in zip(widths, strides):
      layers.append(nnx.List([BasicBlock(cin, cout, stride, dtype=dtype, rngs=rngs,
                                         padding=padding, ops_impl=ops_impl),
                              BasicBlock(cout, cout, 1, dtype=dtype, rngs=rngs,
                                         padding=padding, ops_impl=ops_impl)]))
      cin = cout
    self.layers = nnx.List(layers)
    self.out_channels = widths[-1]

  def __call__(self, x):
    x = x.astype(self.dtype)
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    x = cpu_ops.max_pool(x, 3, 2, 1, self.ops_impl)
    for layer in self.layers:
      for block in layer:
        x = block(x)
    return x
