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

BatchNorm follows `model.train()` / `model.eval()`. Both streams are
ResNet-18 (`models.resnet`); d = 8 * width. `visual_padding` is the visual
stream's convolution padding (`models.resnet.PADDINGS`); the audio stream
always pads with zeros.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from soundloc_jax.errors import ConfigError
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


class AVModel(nnx.Module):
  """Visual ResNet-18 (feature map) + audio ResNet-18 (pooled embedding)."""

  def __init__(self, *, width: int = 64, layer4_stride: int = 1, audio_layer4_stride: int = 2,
               audio_pool: str = "mean", visual_padding: str = "zeros", dtype=jnp.float32,
               rngs: nnx.Rngs):
    if audio_pool not in AUDIO_POOLS:
      raise ConfigError(f"config.model.audio_pool: unknown {audio_pool!r}; available: "
                        f"{', '.join(AUDIO_POOLS)}")
    if visual_padding not in PADDINGS:
      raise ConfigError(f"config.model.visual_padding: unknown {visual_padding!r}; available: "
                        f"{', '.join(PADDINGS)}")
    self.visual = ResNet18(3, width=width, layer4_stride=layer4_stride, padding=visual_padding,
                           dtype=dtype, rngs=rngs)
    self.audio = ResNet18(1, width=width, layer4_stride=audio_layer4_stride, dtype=dtype,
                          rngs=rngs)
    self.audio_pool = audio_pool

  def __call__(self, image, spectrogram):
    visual = l2_normalize(self.visual(normalize_image(image)))
    audio_map = self.audio(spectrogram[..., None])
    audio = l2_normalize(AUDIO_POOLS[self.audio_pool](audio_map.astype(jnp.float32),
                                                      axis=(1, 2)))
    response = jnp.einsum("bhwd,bd->bhw", visual, audio)
    return {"visual_features": visual, "audio_embedding": audio, "response": response}


def build_model(model_config, seed: int = 0) -> AVModel:
  """AVModel from `config.model` (width, layer4_stride, audio_layer4_stride,
  audio_pool, visual_padding, compute_dtype; a config.json written before a field existed gets
  its default from `workdir.read_config`)."""
  return AVModel(width=model_config.width, layer4_stride=model_config.layer4_stride,
                 audio_layer4_stride=model_config.audio_layer4_stride,
                 audio_pool=model_config.audio_pool,
                 visual_padding=model_config.visual_padding,
                 dtype=jnp.dtype(model_config.compute_dtype), rngs=nnx.Rngs(seed))
