"""The extended protocol: sounds whose source is not in the frame.

cIoU and AUC score only pairs whose sounding object is visible, so a map that
lights some object for every sound scores well. The extended Flickr-SoundNet
and VGG-SS test sets (Mo and Morgado, "A Closer Look at Weakly-Supervised
Audio-Visual Source Localization", NeurIPS 2022, SLAVC) add pairs whose source
is not visible and score every pair by the model's *localisation confidence*:

* a pair is a **positive** when it has at least one annotated box (the source
  is visible), a **negative** when it has none;
* at a confidence threshold `t`, a pair is *detected* when `conf >= t`;
  a detected positive with cIoU `>= iou_threshold` (0.5) is a true positive;
  a detected positive with a lower cIoU (found, in the wrong place) and every
  detected negative are false positives; an undetected positive is a false
  negative; an undetected negative counts nowhere (a true negative);
* precision = TP / (TP + FP) (1 when nothing is detected), recall = TP / (TP
  + FN) (1 when TP + FN = 0);
* AP is the area under the precision-recall curve over the thresholds, max-F1
  the largest `2 P R / (P + R)` (0 where P + R = 0).

Two rules for the thresholds (`ap_rule`, `AP_RULES`):
  "exact" (default)  every distinct confidence is a threshold; AP is the
                     all-point interpolated area `sum_k (R_k - R_{k-1}) *
                     max_{j >= k} P_j` from R_0 = 0; max-F1 over every
                     threshold. A perfect model scores AP 1.
  "slavc"            what SLAVC's released `utils.EvaluatorFull` computes:
                     AP over the thresholds `sorted(conf)[:-1][::-skip]`
                     (the largest confidence left out, `skip = max(1, N //
                     200)`), the sum `sum_i max(P[i:]) * (R[i+1] - R[i])`
                     (no segment from recall 0, so a perfect model scores
                     a little below 1); F1 at the thresholds
                     `sorted(conf)[::max(1, N // 10)]` (about ten quantiles),
                     max-F1 their maximum. Numbers comparable with the papers
                     that report with that code.

Confidence (`CONFIDENCES`, `confidences`): one number per map, higher =
"a source is here". The default, `"slavc"`, is SLAVC's: the response (a
cosine) mapped to [0, 1] by `(h + 1) / 2`, upsampled to S x S bicubically
with aligned corners (PyTorch `interpolate(mode="bicubic",
align_corners=True)`, `bicubic_align_corners`), then the mean of its top
quarter of pixels (`S*S // 4`). Alternatives: `"peak"` (the map's maximum),
`"mean"` (its mean). AP and max-F1 depend only on the order of the
confidences, so any increasing change of the confidence leaves them as they
are; the confidence scale matters only for `confidence_threshold` (the
false-alarm rate below).

No input makes these functions fail or return NaN: a NaN confidence ranks
below every number (never detected, counted in `n_conf_nan`), a flat map has
the confidence of its constant value, a split with no positive or with no
sample at all scores AP 0 and max-F1 0.
"""

from __future__ import annotations

import numpy as np

from soundloc_jax.evaluation.protocol import _BLOCK, resample_counts

AP_RULES = ("exact", "slavc")
AP_CI_KEYS = ("ap_ci95_lo", "ap_ci95_hi", "max_f1_ci95_lo", "max_f1_ci95_hi")
BICUBIC_A = -0.75  # PyTorch's (and OpenCV's) cubic convolution coefficient


# ----------------------------------------------------------------------------
# Confidence.

def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """`[n, 4]` cubic-convolution weights of taps at offsets -1, 0, 1, 2 for a
  fractional position `t` in [0, 1) (Keys, a = -0.75, as PyTorch)."""
  a = BICUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):   # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(dst: int, src: int) -> np.ndarray:
  """The `[dst, src]` float64 matrix of PyTorch's bicubic resize with
  `align_corners=True` along one axis: source position `i * (src - 1) / (dst
  - 1)` (0 when `dst == 1`), four taps clamped to the border."""
  if dst <= 0 or src <= 0:
    raise ValueError(f"sizes must be positive, got dst={dst}, src={src}")
  scale = (src - 1) / (dst - 1) if dst > 1 else 0.0
  pos = np.arange(dst, dtype=np.float64) * scale
  base = np.floor(pos)
  weights = _cubic_weights(pos - base)
  taps = np.clip(base[:, None].astype(np.int64) + np.arange(-1, 3), 0, src - 1)
  m = np.zeros((dst, src), np.float64)
  np.add.at(m, (np.repeat(np.arange(dst), 4), taps.ravel()), weights.ravel())
  return m


def bicubic_align_corners(maps, size) -> np.ndarray:
  """`[N, h, w]` (or `[h, w]`) maps resized to `size` x `size` as PyTorch's
  `F.interpolate(mode="bicubic", align_corners=True)` does (float32 out; the
  products are float64, so results agree with PyTorch to float32 rounding)."""
  m = np.asarray(maps, np.float64)
  squeeze = m.ndim == 2
  if squeeze:
    m = m[None]
  rows, cols = bicubic_matrix(int(size), m.shape[-2]), bicubic_matrix(int(size), m.shape[-1])
  n, h, w = m.shape
  # two flat BLAS products (a batched matmul is ~100x slower here)
  wide = (m.reshape(n * h, w) @ cols.T).reshape(n, h, -1)                 # [n, h, W]
  out = (wide.transpose(0, 2, 1).reshape(-1, h) @ rows.T).reshape(n, -1, rows.shape[0])
  out = out.transpose(0, 2, 1).astype(np.float32)                         # [n, H, W]
  return out[0] if squeeze else out


def _slavc_confidence(resp: np.ndarray, size: int) -> np.ndarray:
  n = resp.shape[0]
  pixels = int(size) * int(size)
  k = max(pixels // 4, 1)
  out = np.empty((n,), np.float64)
  for a in range(0, n, _BLOCK):  # blocks bound the upsampled maps' memory
    b = min(a + _BLOCK, n)
    up = (bicubic_align_corners(resp[a:b], size).reshape(b - a, -1).astype(np.float64) + 1) / 2
    out[a:b] = np.partition(up, pixels - k, axis=1)[:, pixels - k:].mean(axis=1)
  return out


CONFIDENCES = {
    "slavc": _slavc_confidence,
    "peak": lambda resp, size: resp.reshape(len(resp), -1).max(axis=1).astype(np.float64),
    "mean": lambda resp, size: resp.reshape(len(resp), -1).mean(axis=1, dtype=np.float64),
}


def confidences(responses, name: str = "slavc", size: int = 224) -> np.ndarray:
  """float64 `[N]`: the confidence `name` (`CONFIDENCES`, module docstring) of
  each raw response map `[N, h, w]` at evaluation size `size`. NaN maps give
  NaN (the scores below rank them last). ValueError names an unknown rule."""
  if name not in CONFIDENCES:
    raise ValueError(f"unknown confidence {name!r}; available: {', '.join(CONFIDENCES)}")
  resp = np.asarray(responses, np.float32)
  if resp.ndim == 2:
    resp = resp[None]
  if resp.shape[0] == 0:
    return np.zeros((0,), np.float64)
  return CONFIDENCES[name](resp, size)


# ----------------------------------------------------------------------------
# Precision, recall, AP, max-F1.

def _inputs(positive, cious, conf, iou_threshold):
  positive = np.asarray(positive, bool).reshape(-1)
  cious = np.nan_to_num(np.asarray(cious, np.float64).reshape(-1), nan=0.0)
  conf = np.asarray(conf, np.float64).reshape(-1)
  if not len(positive) == len(cious) == len(conf):
    raise ValueError(f"{len(positive)} positive flags, {len(cious)} cIoUs and {len(conf)} "
                     "confidences: expected one of each per sample")
  conf = np.where(np.isnan(conf), -np.inf, conf)  # a NaN is never detected
  return positive, positive & (cious >= iou_threshold), conf


def counts_at(positive, cious, conf, thresholds, iou_threshold=0.5):
  """`(tp, fp, fn)` int64 arrays, one entry per threshold: the pairs with
  `conf >= t` split by the rules of the module docstring."""
  positive, correct, conf = _inputs(positive, cious, conf, iou_threshold)
  order = np.argsort(conf, kind="stable")
  sorted_conf = conf[order]
  # cumulative counts from the top: how many of each kind have conf >= t
  tail = lambda x: np.concatenate([np.cumsum(x[order][::-1])[::-1], [0]])  # noqa: E731
  correct_above, positive_above = tail(correct), tail(positive)
  first = np.searchsorted(sorted_conf, np.asarray(thresholds, np.float64), side="left")
  detected = len(conf) - first
  tp = correct_above[first]
  fp = detected - tp
  fn = positive.sum() - positive_above[first]
  return tp.astype(np.int64), fp.astype(np.int64), fn.astype(np.int64)


def precision_recall(tp, fp, fn):
  """Precision and recall (float64) with SLAVC's conventions: precision 1
  when nothing is detected, recall 1 when TP + FN = 0."""
  tp, fp, fn = (np.asarray(x, np.float64) for x in (tp, fp, fn))
  p = np.divide(tp, tp + fp, out=np.ones_like(tp), where=(tp + fp) > 0)
  r = np.divide(tp, tp + fn, out=np.ones_like(tp), where=(tp + fn) > 0)
  return p, r


def _f1(p, r):
  return np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)


def ap_max_f1(positive, cious, conf, iou_threshold=0.5, rule="exact") -> dict:
  """`{"ap", "max_f1", "max_f1_conf"}` of pairs (module docstring): per pair
  `positive` (source visible), its cIoU (ignored for negatives) and its
  confidence. `max_f1_conf` is the threshold where F1 peaks (the first, from
  the top, on a tie; 0.0 where that threshold is not finite). Never NaN: no
  sample, or no positive, scores 0 (and `max_f1_conf` 0.0)."""
  if rule not in AP_RULES:
    raise ValueError(f"unknown AP rule {rule!r}; available: {', '.join(AP_RULES)}")
  positive, _, conf = _inputs(positive, cious, conf, iou_threshold)
  n = len(conf)
  if n == 0 or not positive.any():
    return {"ap": 0.0, "max_f1": 0.0, "max_f1_conf": 0.0}
  ascending = np.sort(conf)
  if rule == "exact":
    thresholds = np.unique(conf)[::-1]
    p, r = precision_recall(*counts_at(positive, cious, conf, thresholds, iou_threshold))
    envelope = np.maximum.accumulate(p[::-1])[::-1]
    ap = float(np.sum(np.diff(np.concatenate([[0.0], r])) * envelope))
    f1 = _f1(p, r)
  else:
    thresholds = ascending[:-1][::-max(1, n // 200)]
    p, r = precision_recall(*counts_at(positive, cious, conf, thresholds, iou_threshold))
    envelope = np.maximum.accumulate(p[::-1])[::-1] if len(p) else p
    ap = float(np.sum(envelope[:-1] * np.diff(r))) if len(p) > 1 else 0.0
    thresholds = ascending[::max(1, n // 10)]
    f1 = _f1(*precision_recall(*counts_at(positive, cious, conf, thresholds, iou_threshold)))
  best = int(np.argmax(f1))
  at = float(thresholds[best])
  return {"ap": ap, "max_f1": float(f1[best]), "max_f1_conf": at if np.isfinite(at) else 0.0}


def _weighted_exact(positive, correct, conf, weights):
  """AP and max-F1 of the "exact" rule, `[B]` each, for `B` weightings
  `weights [B, n]` of the pairs (a resample's counts): every distinct
  confidence is a threshold. A confidence whose pairs all have weight 0 in a
  resample repeats the point of the threshold above it (or adds "nothing
  detected": P 1, R 0), which changes neither the area nor the maximum, so
  one sort serves every resample."""
  order = np.argsort(-conf, kind="stable")
  c = conf[order]
  ends = np.flatnonzero(np.concatenate([c[1:] != c[:-1], [True]]))  # last pair per threshold
  w = weights[:, order]
  cum = lambda x: np.cumsum(w * x, axis=1)[:, ends]  # noqa: E731
  tp, detected, pos_above = cum(correct[order]), cum(1.0), cum(positive[order])
  total_pos = (w * positive[order]).sum(axis=1, keepdims=True)
  p, r = precision_recall(tp, detected - tp, total_pos - pos_above)
  envelope = np.maximum.accumulate(p[:, ::-1], axis=1)[:, ::-1]
  ap = np.sum(np.diff(r, axis=1, prepend=0.0) * envelope, axis=1)
  f1 = _f1(p, r).max(axis=1)
  none = total_pos[:, 0] <= 0  # a resample with no positive scores 0 (as ap_max_f1)
  return np.where(none, 0.0, ap), np.where(none, 0.0, f1)


def ap_max_f1_ci95(positive, cious, conf, iou_threshold=0.5, rule="exact",
                   n_bootstrap=1000, seed=0, block: int = 100) -> dict:
  """95% percentile-bootstrap intervals of `ap_max_f1`'s AP and max-F1:
  `AP_CI_KEYS` (`ap_ci95_lo` / `_hi`, `max_f1_ci95_lo` / `_hi`), the
  2.5 / 97.5 percentiles over `n_bootstrap` resamples of the pairs with
  replacement (seeded by `seed`; a pair is resampled on its own, so the two
  pairs of one image in test + test_offscreen are drawn independently).
  Resample `b` scores exactly what `ap_max_f1` gives on the pairs drawn as
  `np.random.default_rng(seed).integers(0, n, (n_bootstrap, n))[b]`. The
  "exact" rule is vectorised over resamples (`block` at a time); the
  "slavc" rule picks thresholds from each resample's quantiles and is scored
  resample by resample. No pair, or `n_bootstrap <= 0`: every bound 0.0."""
  if rule not in AP_RULES:
    raise ValueError(f"unknown AP rule {rule!r}; available: {', '.join(AP_RULES)}")
  positive, correct, conf = _inputs(positive, cious, conf, iou_threshold)
  n = len(conf)
  if n == 0 or n_bootstrap <= 0:
    return dict.fromkeys(AP_CI_KEYS, 0.0)
  rng = np.random.default_rng(seed)
  aps, f1s = [], []
  if rule == "exact":
    for start in range(0, n_bootstrap, block):
      ap, f1 = _weighted_exact(positive, correct.astype(np.float64), conf,
                               resample_counts(rng, n, min(block, n_bootstrap - start)))
      aps.append(ap)
      f1s.append(f1)
  else:
    ious = np.where(correct, 1.0, 0.0)  # _inputs' verdict, kept per drawn pair
    for idx in rng.integers(0, n, size=(n_bootstrap, n)):
      s = ap_max_f1(positive[idx], ious[idx], conf[idx], 0.5, rule)
      aps.append([s["ap"]])
      f1s.append([s["max_f1"]])
  ap_lo, ap_hi = np.percentile(np.concatenate(aps), [2.5, 97.5])
  f1_lo, f1_hi = np.percentile(np.concatenate(f1s), [2.5, 97.5])
  return dict(zip(AP_CI_KEYS, map(float, (ap_lo, ap_hi, f1_lo, f1_hi))))


def rate(flags) -> float:
  """Mean of boolean `flags`, 0.0 for none (never NaN)."""
  flags = np.asarray(flags, np.float64)
  return float(flags.mean()) if flags.size else 0.0


def confidence_summary(conf, prefix: str) -> dict:
  """`<prefix>_mean`, `_p10`, `_p50`, `_p90` of the finite confidences (0.0
  each when there are none)."""
  conf = np.asarray(conf, np.float64)
  conf = conf[np.isfinite(conf)]
  if conf.size == 0:
    return {f"{prefix}_{k}": 0.0 for k in ("mean", "p10", "p50", "p90")}
  p10, p50, p90 = np.percentile(conf, [10, 50, 90])
  return {f"{prefix}_mean": float(conf.mean()), f"{prefix}_p10": float(p10),
          f"{prefix}_p50": float(p50), f"{prefix}_p90": float(p90)}


# ----------------------------------------------------------------------------
# Probes: the same images with a sound that has no source in any of them.

def _silence(num: int, rng) -> np.ndarray:
  del rng
  return np.zeros((num,), np.float32)


def _noise(num: int, rng) -> np.ndarray:
  """White Gaussian noise at RMS 0.1 (-20 dBFS), clipped to [-1, 1]."""
  return np.clip(0.1 * rng.standard_normal(num), -1.0, 1.0).astype(np.float32)


PROBES = {"silence": _silence, "noise": _noise}


def probe_spectrogram(name: str, front_end, seed: int = 0) -> np.ndarray:
  """float32 `[F, T]`: the front end `front_end` (`audio.log_spectrogram`
  params, e.g. `config.audio`) of the probe clip `name` (`PROBES`):
  `clip_seconds` of silence or of white noise (one clip, from `seed`, played
  to every image). ValueError names an unknown probe."""
  from soundloc_jax import audio as audio_lib
  if name not in PROBES:
    raise ValueError(f"unknown probe {name!r}; available: {', '.join(PROBES)}")
  get = audio_lib._get  # pylint: disable=protected-access
  rate_hz = int(get(front_end, "sample_rate"))
  num = int(round(float(get(front_end, "clip_seconds")) * rate_hz))
  wave = PROBES[name](num, np.random.default_rng(seed))
  return np.asarray(audio_lib.log_spectrogram(wave, rate_hz, front_end), np.float32)


def lit_objects(responses, object_maps, size) -> np.ndarray:
  """bool `[N]`: the peak of each map (`protocol.peak_indices`) lies on one of
  its objects; `object_maps` `[N, K, S, S]` (any object, sounding or silent;
  zero maps for padding)."""
  from soundloc_jax.evaluation.protocol import peak_indices
  maps = np.asarray(object_maps)
  n = len(maps)
  if n == 0:
    return np.zeros((0,), bool)
  peaks = peak_indices(responses, size)
  return (maps.reshape(n, maps.shape[1], -1)[np.arange(n), :, peaks] > 0).any(axis=1)
