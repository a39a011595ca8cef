"""Audio front end: waveform -> log spectrogram, defined once.

Builders, inference (`localize`) and tests all call `log_spectrogram`, so a
model always sees the transform it was trained with. Two kinds, picked by
`params["kind"]` (an `ml_collections.ConfigDict` or a plain dict, normally
`config.audio`):

* ``"lvs_psd"`` -- the public LVS test code's transform: the first
  `clip_seconds` of the waveform (tiled if shorter), clipped to [-1, 1],
  `scipy.signal.spectrogram(x, sample_rate, nperseg, noverlap)` (a power
  spectral density: Tukey(0.25) window, per-segment mean removed, density
  scaling), then `log(S + 1e-7) / 12`. With 16 kHz, 10 s, nperseg 512,
  noverlap 274 this is the 257x671 input LVS evaluates with; noverlap 353
  with 3 s gives 257x299 (HardPos's "257x300").
* ``"log_mel"`` -- librosa mel power spectrogram, `log(M + 1e-7) / 12`
  (same scaling, so both kinds live in a similar numeric range). ICL uses a
  log-mel front end without giving its parameters; the demo dataset uses this.

The output is float32 `[freq, time]`; the model adds the channel axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

LOG_EPS = 1e-7
LOG_SCALE = 12.0

# The front ends the project uses, written once; configs, builders and the
# evaluator refer to these (copy before changing one: `dict(LVS_TRAIN, ...)`).
# The av_digits demo (64 x 63).
DEMO = dict(kind="log_mel", sample_rate=16000, clip_seconds=0.5, n_fft=512, hop_length=128,
            n_mels=64)
# Real-data training: the LVS transform on 3 s at 16 kHz (257 x 299, HardPos's "257x300").
LVS_TRAIN = dict(kind="lvs_psd", sample_rate=16000, clip_seconds=3.0, nperseg=512,
                 noverlap=353)
# The LVS test code's transform, 10 s (257 x 671; see docs/evaluation.md).
LVS_TEST = dict(kind="lvs_psd", sample_rate=16000, clip_seconds=10.0, nperseg=512,
                noverlap=274)
# The stamps benchmark (data_builders/stamps): 1 s as a 64-band log-mel with a
# 10 ms hop (64 x 101).
STAMPS = dict(kind="log_mel", sample_rate=16000, clip_seconds=1.0, n_fft=512, hop_length=160,
              n_mels=64)
# The parameters each kind reads.
KIND_KEYS = {"lvs_psd": ("kind", "sample_rate", "clip_seconds", "nperseg", "noverlap"),
             "log_mel": ("kind", "sample_rate", "clip_seconds", "n_fft", "hop_length", "n_mels")}


def _get(params: Any, key: str):
  if isinstance(params, Mapping):
    return params[key]
  return getattr(params, key)


def fit_length(waveform: np.ndarray, num_samples: int) -> np.ndarray:
  """First `num_samples` of a mono waveform, tiled (repeated) if shorter."""
  waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)
  if waveform.size == 0:
    raise ValueError("empty waveform")
  if waveform.size < num_samples:
    reps = -(-num_samples // waveform.size)
    waveform = np.tile(waveform, reps)
  return waveform[:num_samples]


def window_around(waveform: np.ndarray, sample_rate: int, centre_s: float | None,
                  seconds: float) -> np.ndarray:
  """The `seconds` of `waveform` centred on `centre_s` (default: the middle),
  shifted to lie inside the waveform: the audio paired with a video frame
  shown at `centre_s` (builders and `localize --video` take the same window)."""
  waveform = np.asarray(waveform)
  total = waveform.size / sample_rate
  centre = total / 2 if centre_s is None else float(centre_s)
  start = int(round(max(0.0, min(centre - seconds / 2, total - seconds)) * sample_rate))
  return waveform[start:start + int(round(seconds * sample_rate))]


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
  if int(orig_sr) == int(target_sr):
    return np.asarray(waveform, dtype=np.float32)
  import librosa  # heavy import, only when needed
  return librosa.resample(np.asarray(waveform, dtype=np.float32),
                          orig_sr=int(orig_sr), target_sr=int(target_sr))


def log_spectrogram(waveform: np.ndarray, sample_rate: int, params: Any) -> np.ndarray:
  """Mono waveform (any rate) -> float32 log spectrogram `[freq, time]`."""
  kind = _get(params, "kind")
  target_sr = int(_get(params, "sample_rate"))
  num_samples = int(round(float(_get(params, "clip_seconds")) * target_sr))
  x = resample(waveform, sample_rate, target_sr)
  x = np.clip(fit_length(x, num_samples), -1.0, 1.0)
  if kind == "lvs_psd":
    from scipy import signal
    _, _, spec = signal.spectrogram(x, target_sr, nperseg=int(_get(params, "nperseg")),
                                    noverlap=int(_get(params, "noverlap")))
  elif kind == "log_mel":
    import librosa
    spec = librosa.feature.melspectrogram(
        y=x, sr=target_sr, n_fft=int(_get(params, "n_fft")),
        hop_length=int(_get(params, "hop_length")), n_mels=int(_get(params, "n_mels")),
        power=2.0)
  else:
    raise ValueError(f"unknown audio front end kind {kind!r}; expected 'lvs_psd' or 'log_mel'")
  return (np.log(spec + LOG_EPS) / LOG_SCALE).astype(np.float32)


def spectrogram_shape(params: Any) -> tuple[int, int]:
  """`(freq, time)` that `log_spectrogram` returns for these parameters."""
  return tuple(log_spectrogram(np.zeros(16, np.float32) + 1e-3, int(_get(params, "sample_rate")),
                               params).shape)


def params_dict(params: Any) -> dict:
  """The front-end parameters as a plain, JSON-able dict (for metadata checks)."""
  kind = _get(params, "kind")
  if kind not in KIND_KEYS:
    raise ValueError(f"unknown audio front end kind {kind!r}")
  return {k: _get(params, k) for k in KIND_KEYS[kind]}


def differing_keys(recorded: Mapping, params: Any) -> list[str]:
  """Keys in which a recorded front end (a dataset's metadata, `params_dict`
  form) and `params` (e.g. `config.audio`) differ: every key of the record,
  whether or not `params`' kind reads it, and every key `params`' kind reads
  that the record lacks. Numbers compare as floats (16000 == 16000.0)."""

  def value(key):
    try:
      return _get(params, key)
    except (KeyError, AttributeError):
      return None

  def same(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
      return math.isclose(float(a), float(b))
    return a == b

  keys = list(recorded) + [k for k in params_dict(params) if k not in recorded]
  return [k for k in keys if k not in recorded or not same(recorded[k], value(k))]
