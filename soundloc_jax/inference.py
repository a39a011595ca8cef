"""Inference: load a trained workdir and localize the sound in one image.

  import soundloc_jax
  loc = soundloc_jax.load("runs/icl")                # latest checkpoint
  heat = loc.localize(image, waveform, sample_rate)  # [S, S] in [0, 1]
  x, y = loc.peak(heat, image.shape)                 # pixel in `image`

`load(workdir, step=None)` reads `workdir/config.json` (written by training;
`workdir.read_config`), rebuilds the model exactly as the trainer does
(`state.create_model_state`) and restores the student's parameters and batch
statistics from the checkpoint (the latest unless `step` is given): the
checkpoint's model item alone, no optimizer is built.

What `Localizer.localize` does to its inputs is what the evaluator does to a
test example, so a heatmap here equals the evaluator's for the same inputs:
  * image: uint8 `[H, W, 3]` (`[H, W]` grayscale, `[H, W, 1]`, and `[H, W, 4]`
    RGBA, whose alpha is dropped as PIL's `convert("RGB")` does, are accepted)
    -> `input_pipeline.center_crop_resize` to `S = config.dataset.image_size`
    (shorter side to S, bicubic, centre crop), skipped when already S x S;
  * audio: mono float waveform at any rate (`[n]`; stereo `[n, c]` as
    soundfile returns it or `[c, n]` as librosa does is averaged over
    channels; integer PCM is scaled to [-1, 1]) ->
    `audio.log_spectrogram(waveform, sample_rate, config.audio)`;
  * `state.make_predict_fn` (eval-mode forward) -> `response` `[h, w]`;
  * `evaluation.protocol.localization_map(response, S)`: bilinear upsampling to S x S
    and min-max normalisation, the protocol's heatmap.
The heatmap covers the centre crop only; `peak` and `crop_box` map it back to
the original image's pixels.

Errors a user can fix (missing workdir, config or checkpoint; a checkpoint of
a different model; a bad image or waveform) raise `soundloc_jax.errors.UserError`
subclasses (`WorkdirError`, `CheckpointMismatchError`, `CorruptCheckpointError`,
`InputError`) whose message names the path or argument.
"""

from __future__ import annotations

import math
import os

import numpy as np

from soundloc_jax.errors import ConfigError, InputError, WorkdirError

# Audio beyond the front end's clip (plus this margin, for the resampler's
# filter) cannot change the spectrogram; longer inputs are cut before resampling.
RESAMPLE_MARGIN_SECONDS = 1.0


# ----------------------------------------------------------------------------
# Geometry of the test transform (`input_pipeline.center_crop_resize`)
# ----------------------------------------------------------------------------

def crop_box(image_shape, size: int) -> tuple[float, float, float, float]:
  """`(x0, y0, x1, y1)`: the region of an `image_shape` image (`(H, W, ...)`)
  that the `size` x `size` model input shows, in original pixel units
  (edges, half-open; may be fractional)."""
  h, w = int(image_shape[0]), int(image_shape[1])
  from soundloc_jax import input_pipeline  # grain: imported only when used
  rh, rw = input_pipeline.resized_shape(h, w, size)
  top, left = (rh - size) // 2, (rw - size) // 2
  sy, sx = h / rh, w / rw
  return left * sx, top * sy, (left + size) * sx, (top + size) * sy


def _peak_cell(heatmap: np.ndarray) -> tuple[float, float]:
  """`(row, col)` of the heatmap's maximum: the centroid of the plateau of
  maximal values that holds the first argmax (bilinear upsampling makes flat
  maxima at the borders, where the first argmax would sit on the plateau's edge)."""
  from scipy import ndimage
  hm = np.asarray(heatmap, np.float64)
  top = np.nanmax(hm)
  tied = hm >= top - 1e-6 * max(1.0, abs(top))
  labels, _ = ndimage.label(tied)
  first = np.unravel_index(np.nanargmax(hm), hm.shape)
  rows, cols = np.nonzero(labels == labels[first])
  return float(rows.mean()), float(cols.mean())


def peak(heatmap, image_shape=None) -> tuple[int, int]:
  """`(x, y)` pixel of the heatmap's maximum.

  With `image_shape` (`(H, W[, C])` of the image given to `localize`, before
  any resizing) the point is mapped back through the centre crop to that
  image's pixels; without it, it is a pixel of the heatmap itself. `x` is the
  column, `y` the row, (0, 0) the top-left pixel.
  """
  hm = np.asarray(heatmap)
  if hm.ndim != 2 or hm.size == 0:
    raise InputError(f"peak: expected a 2-D heatmap, got shape {hm.shape}")
  if not np.isfinite(hm).any():
    raise InputError("peak: the heatmap has no finite value")
  row, col = _peak_cell(np.where(np.isfinite(hm), hm, -np.inf))
  if image_shape is None:
    return int(round(col)), int(round(row))
  h, w = int(image_shape[0]), int(image_shape[1])
  x0, y0, x1, y1 = crop_box((h, w), max(hm.shape))
  # Cell centre (edge coordinates) inside the crop, then into the image.
  x = x0 + (col + 0.5) / hm.shape[1] * (x1 - x0)
  y = y0 + (row + 0.5) / hm.shape[0] * (y1 - y0)
  return (int(min(max(math.floor(x), 0), w - 1)), int(min(max(math.floor(y), 0), h - 1)))


# ----------------------------------------------------------------------------
# Input normalisation
# ----------------------------------------------------------------------------

def to_rgb_uint8(image) -> np.ndarray:
  """uint8 `[H, W, 3]` from uint8 `[H, W]`, `[H, W, 1]`, `[H, W, 3]` or `[H, W, 4]`."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise InputError(f"image must be a uint8 array (0..255), got dtype {image.dtype}; "
                     "e.g. (np.clip(x, 0, 1) * 255).round().astype(np.uint8) for floats in [0, 1]")
  if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
    image = image[..., :3] if image.shape[-1] == 4 else image
    if image.shape[-1] == 1:
      image = image[..., 0]
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise InputError(f"image must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
                     f"got shape {image.shape}")
  if image.shape[0] == 0 or image.shape[1] == 0:
    raise InputError(f"image is empty (shape {image.shape})")
  return np.ascontiguousarray(image)


def to_mono_float(waveform) -> np.ndarray:
  """float32 `[n]` from `[n]`, `[n, c]` or `[c, n]` (float, or integer PCM)."""
  x = np.asarray(waveform)
  if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating)
                                 or np.issubdtype(x.dtype, np.integer)):
    raise InputError(f"waveform must be a float or integer array, got dtype {x.dtype}")
  if np.issubdtype(x.dtype, np.integer):
    info = np.iinfo(x.dtype)
    x = (x.astype(np.float64) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
  if x.ndim == 2:
    # Channels are the short axis: [n, c] (soundfile) or [c, n] (librosa).
    x = x.mean(axis=0 if x.shape[0] < x.shape[1] else 1)
  if x.ndim != 1:
    raise InputError(f"waveform must be [n] (mono) or [n, channels], got shape {x.shape}")
  if x.size == 0:
    raise InputError("waveform is empty (0 samples)")
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise InputError("waveform has NaN or infinite samples")
  return x


def seconds_needed(audio_config) -> float:
  """Seconds of audio at any rate that can affect the spectrogram (what a file
  reader needs to decode): the front end's clip plus the resampler's margin."""
  return float(audio_config.clip_seconds) + RESAMPLE_MARGIN_SECONDS


def samples_needed(audio_config, sample_rate: float) -> int:
  """Samples at `sample_rate` that can affect the spectrogram: the front end's
  clip, plus a margin for the resampler when the rate differs."""
  seconds = float(audio_config.clip_seconds)
  if int(sample_rate) != int(audio_config.sample_rate):
    seconds += RESAMPLE_MARGIN_SECONDS
  return int(math.ceil(seconds * float(sample_rate)))


# ----------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------

class Localizer:
  """A trained student, ready to localize: see the module docstring."""

  def __init__(self, config, graphdef, params, batch_stats, *, workdir: str = "",
               step: int | None = None, meta: dict | None = None):
    from soundloc_jax import state
    self.config = config
    self.graphdef = graphdef
    self.params = params
    self.batch_stats = batch_stats
    self.workdir = workdir
    self.step = step
    self.meta = dict(meta or {})
    self.image_size = int(config.dataset.image_size)
    self._predict = state.make_predict_fn(graphdef)

  def __repr__(self):
    return (f"Localizer(workdir={self.workdir!r}, step={self.step}, "
            f"image_size={self.image_size}, method={self.config.get('method', {}).get('name')!r})")

  def model_image(self, image) -> np.ndarray:
    """The uint8 `[S, S, 3]` model input for `image` (the test transform)."""
    from soundloc_jax import input_pipeline
    image = input_pipeline.eval_image(to_rgb_uint8(image), self.image_size)
    return np.ascontiguousarray(image, dtype=np.uint8)

  def spectrogram(self, waveform, sample_rate) -> np.ndarray:
    """`audio.log_spectrogram` of the (mono-mixed) waveform with the run's front end."""
    from soundloc_jax import audio
    try:
      rate = float(sample_rate)
    except (TypeError, ValueError):
      raise InputError(f"sample_rate must be a number, got {sample_rate!r}") from None
    if not math.isfinite(rate) or rate <= 0 or rate != int(rate):
      raise InputError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    x = to_mono_float(waveform)[:samples_needed(self.config.audio, rate)]
    return audio.log_spectrogram(x, int(rate), self.config.audio)

  def response(self, image, waveform, sample_rate) -> np.ndarray:
    """Raw `[h, w]` response (cosine similarity per feature cell, before min-max)."""
    img = self.model_image(image)
    spec = self.spectrogram(waveform, sample_rate)
    out = self._predict(self.params, self.batch_stats, img[None], spec[None])
    return np.asarray(out, np.float32)[0]

  def localize(self, image, waveform, sample_rate) -> np.ndarray:
    """Heatmap `[S, S]` in [0, 1] over the centre crop (the protocol's
    `localization_map` of the response)."""
    from soundloc_jax.evaluation import protocol
    return protocol.localization_map(self.response(image, waveform, sample_rate),
                                     size=self.image_size)

  def peak(self, heatmap, image_shape=None) -> tuple[int, int]:
    """`(x, y)` of the heatmap's maximum in the original image (see `peak`)."""
    return peak(heatmap, image_shape)

  def crop_box(self, image_shape) -> tuple[float, float, float, float]:
    """The region of the original image the heatmap covers (see `crop_box`)."""
    return crop_box(image_shape, self.image_size)


def load(workdir: str, step: int | None = None) -> Localizer:
  """The student of `workdir`'s checkpoint `step` (latest by default)."""
  from soundloc_jax import checkpointing, state
  from soundloc_jax import workdir as workdir_lib
  if not workdir:
    raise WorkdirError("no workdir given")
  workdir = os.path.abspath(os.path.expanduser(str(workdir)))
  if not os.path.exists(workdir):
    raise WorkdirError(f"workdir {workdir} does not exist")
  if not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir} is not a directory")
  config = workdir_lib.read_config(workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  # Checked first: the checkpoint manager would create the folder.
  if not os.path.isdir(ckpt_dir):
    raise WorkdirError(f"no checkpoint in {workdir} ({ckpt_dir} does not exist); "
                       "train first, or point --workdir at a trained run")
  config_json = os.path.join(workdir, "config.json")
  try:
    graphdef, abstract = state.create_model_state(config)
  except ConfigError as e:
    raise WorkdirError(f"{config_json}: {e}") from e
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise WorkdirError(f"{config_json} does not describe a model this version can build "
                       f"({type(e).__name__}: {e})") from e
  model, meta, step = checkpointing.restore_checkpoint(ckpt_dir, config, abstract, step=step,
                                                       source=config_json)
  return Localizer(config, graphdef, model["params"], model["batch_stats"], workdir=workdir,
                   step=step, meta=meta)
