"""EZ-VSL's object-guided localisation (OGL): an ImageNet objectness prior
mixed into the audio-visual map at test time (`config.eval.ogl`).

The rules (EZ-VSL's paper, Sec. 3.3, and its released test code):
  * S_obj, the objectness map, is the mean over channels of the absolute
    value of the last convolutional feature map of a frozen ImageNet
    classifier (its ResNet-18's layer4, stride 32, there): no audio at all.
    Here it is that map of the imported classifier the folder
    `config.eval.ogl.weights` holds: EfficientNet-Lite0's head (1280
    channels after ReLU6, stride 32; `tools.import_efficientnet_lite0`), or
    a torchvision ResNet-18's layer4 (stride 32; `import_torchvision_resnet18`).
    The network is the one the folder holds, never the fine-tuned stream.
  * S_av (the model's response map) and S_obj are each resized bilinearly,
    corners aligned, to the evaluation size, and min-max normalised
    (a constant map is left as it is);
  * the OGL map is min-max(alpha * S_av + (1 - alpha) * S_obj), alpha = 0.4
    (EZ-VSL's default, `config.eval.ogl.alpha`). alpha = 0 is the objectness
    map alone; alpha = 1 the model's own map, normalised.

`with_ogl(predict, ogl_config, size)` wraps an evaluation predict function
(`state.make_predict_fn`, `outputs="all"`): its `response` becomes the OGL
map `[B, size, size]`; every other output (the features retrieval reads) is
unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from soundloc_jax.errors import ConfigError


def resize_align_corners(maps, size: int):
  """Bilinear resize of `[B, h, w]` to `[B, size, size]` with corners aligned
  (torch's `align_corners=True`): output pixel i samples input position
  i * (h - 1) / (size - 1)."""
  maps = jnp.asarray(maps, jnp.float32)

  def axis_weights(n):
    pos = jnp.arange(size, dtype=jnp.float32) * ((n - 1) / max(size - 1, 1))
    lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, n - 1)
    hi = jnp.clip(lo + 1, 0, n - 1)
    frac = pos - lo
    return jax.nn.one_hot(lo, n) * (1 - frac)[:, None] + jax.nn.one_hot(hi, n) * frac[:, None]

  rows, cols = axis_weights(maps.shape[1]), axis_weights(maps.shape[2])
  return jnp.einsum("ih,bhw,jw->bij", rows, maps, cols)


def min_max(maps):
  """Each map of `[B, H, W]` scaled to [0, 1]; a constant map stays as it is."""
  lo = jnp.min(maps, axis=(1, 2), keepdims=True)
  hi = jnp.max(maps, axis=(1, 2), keepdims=True)
  span = hi - lo
  return jnp.where(span > 0, (maps - lo) / jnp.where(span > 0, span, 1.0), maps)


def ogl_combine(av_maps, objectness_maps, alpha: float, size: int):
  """min-max(alpha * S_av + (1 - alpha) * S_obj), both resized and normalised first."""
  av = min_max(resize_align_corners(av_maps, size))
  obj = min_max(resize_align_corners(objectness_maps, size))
  return min_max(alpha * av + (1.0 - alpha) * obj)


def objectness_fn(weights_dir: str):
  """`uint8 [B, S, S, 3] -> [B, s, s]`: S_obj of the classifier in `weights_dir`."""
  from flax import nnx

  from soundloc_jax.tools import classify
  model, normalize, last_map, _ = classify.load_network(weights_dir, "config.eval.ogl.weights")
  graphdef, variables = nnx.split(model)

  @jax.jit
  def fn(variables, image):
    x = last_map(nnx.merge(graphdef, variables), normalize(image))
    return jnp.mean(jnp.abs(x.astype(jnp.float32)), axis=-1)

  return lambda image: fn(variables, image)


def with_ogl(predict, ogl_config, size: int):
  """`predict` with its `response` replaced by the OGL map at `size` (module
  docstring); `ogl_config`: `config.eval.ogl` (`weights`, `alpha`)."""
  alpha = float(ogl_config.alpha)
  if not 0.0 <= alpha <= 1.0:
    raise ConfigError(f"config.eval.ogl.alpha must be in [0, 1], got {alpha}")
  objectness = objectness_fn(ogl_config.weights)
  combine = jax.jit(lambda av, obj: ogl_combine(av, obj, alpha, size))

  def wrapped(params, batch_stats, image, spectrogram):
    out = dict(predict(params, batch_stats, image, spectrogram))
    out["response"] = combine(out["response"], objectness(image))
    return out

  return wrapped
