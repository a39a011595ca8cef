"""The two-stream audio-visual localization model.

Contract (what losses, training, evaluation and inference rely on):

`AVModel(image, spectrogram)` takes
  * `image` uint8 `[B, H, W, 3]` (normalised here with ImageNet mean/std, so
    the host ships bytes, not floats), or float already normalised;
  * `spectrogram` float `[B, F, T]` from `soundloc_jax.audio.log_spectrogram`;
and returns a dict of float32 arrays:
  * `visual_features` `[B, h, w, d]`: layer4 patch features, L2-normalised
    over d (h = H/16 with the default layer4 stride 1);
  * `audio_embedding` `[B, d]`: global-average-pooled audio layer4 features
    (max-pooled with `audio_pool="max"`, as the released LVS model), L2-normalised;
  * `response` `[B, h, w]`: cosine similarity of the audio embedding with each
    patch (ICL's R = V * a, before Eq. 1's min-max, which
    `methods.icl.normalize_response` and the evaluator apply where needed).

BatchNorm follows `model.train()` / `model.eval()`. The audio stream is a
ResNet-18 (`models.resnet`); d = 8 * width. The visual stream is the
`visual_backbone` entry of `VISUAL_BACKBONES`:
  * "resnet18" (the papers'): ResNet-18 of the same width, its layer4 at
    `layer4_stride`, padded as `visual_padding` (`models.resnet.PADDINGS`);
  * "efficientnet_lite0": EfficientNet-Lite0's first 11 blocks (stride 16, 112
    channels) and a 1x1 projection to d (`models.efficientnet`), its
    depthwise convolutions computed by `depthwise_impl`, its BatchNorm
    trained or frozen at the loaded statistics (`visual_bn`), the trunk
    fine-tuned or fixed (`visual_trunk="frozen"`: no gradient); only
    `layer4_stride = 1` and `visual_padding = "zeros"` apply to it.
Each entry normalises a uint8 image its own way (the scaling its ImageNet
weights were trained with); a float image is taken as already normalised for
the backbone. The audio stream always pads with zeros. `cpu_ops` is the
ResNet-18s' max-pool, training BatchNorm and tiny-output convolutions
(`models.cpu_ops`: "auto", the fast forms on the CPU backend only; the same
parameters and results); EfficientNet-Lite0 does not use it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
from flax import nnx

from soundloc_jax.errors import ConfigError
from soundloc_jax.models import cpu_ops as cpu_ops_lib
from soundloc_jax.models import efficientnet
from soundloc_jax.models.resnet import PADDINGS, ResNet18

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Spatial pooling of the audio layer4 map (ours: mean; the LVS release: max).
AUDIO_POOLS = {"mean": jnp.mean, "max": jnp.max}


def normalize_image(image):
  """uint8 `[.., 3]` -> float32 ImageNet-normalised; float input passes through."""
  if image.dtype != jnp.uint8:
    return image.astype(jnp.float32)
  x = image.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def l2_normalize(x, axis=-1, eps=1e-12):
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def _resnet18_visual(*, width, layer4_stride, visual_padding, depthwise_impl, visual_bn,
                     visual_trunk, dtype, rngs, cpu_ops="auto"):
  del depthwise_impl
  if visual_trunk != "finetune":
    raise ConfigError(f"config.model.visual_trunk={visual_trunk!r} is an efficientnet_lite0 "
                      "setting (set it to 'finetune'; optimizer.pretrained_lr_scale=0 freezes "
                      "a resnet18's weights)")
  if visual_bn != "train":
    raise ConfigError(f"config.model.visual_bn={visual_bn!r} is an efficientnet_lite0 setting; "
                      "the resnet18 visual stream trains its BatchNorm (set it to 'train')")
  return ResNet18(3, width=width, layer4_stride=layer4_stride, padding=visual_padding,
                  dtype=dtype, rngs=rngs, ops_impl=cpu_ops)


def _efficientnet_visual(*, width, layer4_stride, visual_padding, depthwise_impl, visual_bn,
                         visual_trunk, dtype, rngs, cpu_ops="auto"):
  if layer4_stride != 1:
    raise ConfigError(f"config.model.layer4_stride={layer4_stride} is a ResNet-18 setting; "
                      "the efficientnet_lite0 visual stream is stride 16 (set it to 1)")
  if visual_padding != "zeros":
    raise ConfigError(f"config.model.visual_padding={visual_padding!r} is a ResNet-18 setting; "
                      "efficientnet_lite0 pads as TensorFlow's SAME (set it to 'zeros')")
  if depthwise_impl != "auto" and depthwise_impl not in efficientnet.DEPTHWISE_IMPLS:
    raise ConfigError(f"config.model.depthwise_impl: unknown {depthwise_impl!r}; available: "
                      f"auto, {', '.join(efficientnet.DEPTHWISE_IMPLS)}")
  if visual_bn not in efficientnet.BATCH_NORMS:
    raise ConfigError(f"config.model.visual_bn: unknown {visual_bn!r}; available: "
                      f"{', '.join(efficientnet.BATCH_NORMS)}")
  if visual_trunk not in TRUNK_MODES:
    raise ConfigError(f"config.model.visual_trunk: unknown {visual_trunk!r}; available: "
                      f"{', '.join(TRUNK_MODES)}")
  return efficientnet.EfficientNetVisual(8 * width, depthwise_impl=depthwise_impl, bn=visual_bn,
                                         frozen=visual_trunk == "frozen", dtype=dtype, rngs=rngs)


TRUNK_MODES = ("finetune", "frozen")


@dataclasses.dataclass(frozen=True)
class VisualBackbone:
  """A `config.model.visual_backbone` entry: `build(**fields)` -> a module
  mapping a normalised image to `[B, h, w, 8 * width]`; `normalize(uint8 image)`;
  `pretrained`: the path in the model's params of what `init_visual` loads
  (`config.optimizer.pretrained_lr_scale` scales its learning rate)."""
  build: Callable
  normalize: Callable
  pretrained: tuple


VISUAL_BACKBONES = {
    "resnet18": VisualBackbone(_resnet18_visual, normalize_image, ("visual",)),
    "efficientnet_lite0": VisualBackbone(_efficientnet_visual, efficientnet.normalize,
                                         ("visual", "trunk")),
}


def get_visual_backbone(name: str) -> VisualBackbone:
  if name not in VISUAL_BACKBONES:
    raise ConfigError(f"config.model.visual_backbone: unknown {name!r}; available: "
                      f"{', '.join(VISUAL_BACKBONES)}")
  return VISUAL_BACKBONES[name]


class AVModel(nnx.Module):
  """Visual stream (feature map; `VISUAL_BACKBONES`) + audio ResNet-18 (pooled embedding)."""

  def __init__(self, *, width: int = 64, layer4_stride: int = 1, audio_layer4_stride: int = 2,
               audio_pool: str = "mean", visual_padding: str = "zeros",
               visual_backbone: str = "resnet18", depthwise_impl: str = "auto",
               visual_bn: str = "train", visual_trunk: str = "finetune", cpu_ops: str = "auto",
               dtype=jnp.float32, rngs: nnx.Rngs):
    if audio_pool not in AUDIO_POOLS:
      raise ConfigError(f"config.model.audio_pool: unknown {audio_pool!r}; available: "
                        f"{', '.join(AUDIO_POOLS)}")
    if cpu_ops not in cpu_ops_lib.IMPLS:
      raise ConfigError(f"config.model.cpu_ops: unknown {cpu_ops!r}; available: "
                        f"{', '.join(cpu_ops_lib.IMPLS)}")
    if visual_padding not in PADDINGS:
      raise ConfigError(f"config.model.visual_padding: unknown {visual_padding!r}; available: "
                        f"{', '.join(PADDINGS)}")
    backbone = get_visual_backbone(visual_backbone)
    self.visual = backbone.build(width=width, layer4_stride=layer4_stride,
                                 visual_padding=visual_padding, depthwise_impl=depthwise_impl,
                                 visual_bn=visual_bn, visual_trunk=visual_trunk, dtype=dtype,
                                 rngs=rngs, cpu_ops=cpu_ops)
    self.visual_normalize = backbone.normalize
    self.audio = ResNet18(1, width=width, layer4_stride=audio_layer4_stride, dtype=dtype,
                          rngs=rngs, ops_impl=cpu_ops)
    self.audio_pool = audio_pool

  def __call__(self, image, spectrogram):
    visual = l2_normalize(self.visual(self.visual_normalize(image)))
    audio_map = self.audio(spectrogram[..., None])
    audio = l2_normalize(AUDIO_POOLS[self.audio_pool](audio_map.astype(jnp.float32),
                                                      axis=(1, 2)))
    response = jnp.einsum("bhwd,bd->bhw", visual, audio)
    return {"visual_features": visual, "audio_embedding": audio, "response": response}


def build_model(model_config, seed: int = 0) -> AVModel:
  """AVModel from `config.model` (width, layer4_stride, audio_layer4_stride,
  audio_pool, visual_padding, visual_backbone, depthwise_impl, visual_bn, visual_trunk,
  cpu_ops, compute_dtype; a
  config.json written before a field existed gets its default from
  `workdir.read_config`)."""
  return AVModel(width=model_config.width, layer4_stride=model_config.layer4_stride,
                 audio_layer4_stride=model_config.audio_layer4_stride,
                 audio_pool=model_config.audio_pool,
                 visual_padding=model_config.visual_padding,
                 visual_backbone=model_config.visual_backbone,
                 depthwise_impl=model_config.depthwise_impl,
                 visual_bn=model_config.visual_bn,
                 visual_trunk=model_config.visual_trunk,
                 cpu_ops=model_config.cpu_ops,
                 dtype=jnp.dtype(model_config.compute_dtype), rngs=nnx.Rngs(seed))
