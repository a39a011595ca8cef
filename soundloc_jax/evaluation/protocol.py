"""The official cIoU / AUC localization protocol, on the host.

Protocol (LVS test code, which HardPos and most later work report with; see
docs/evaluation.md). For each test sample the model's response map `h`
(e.g. 14x14, higher = more likely sounding) is resized to the evaluation size
S (224) with OpenCV-style bilinear interpolation (half-pixel centres, clamped
borders; `evaluation.resize`), turned into `pred = 1 - normalize(-h_S)` (min-max per map, a
constant map left unchanged so it becomes `1 + c`), and binarised at its
median: `t = sort(pred.flatten())[S*S // 2]`, pixels `> t` become 1, then
every pixel still `< 1` becomes 0 (a pixel equal to the maximum 1.0 stays on
even when it equals `t`). The consensus IoU against a ground-truth map
`gt` in [0, 1] is `sum(pred*gt) / (sum(gt) + sum(pred*(gt == 0)))`. Over a
test set, cIoU@0.5 is the fraction of samples with cIoU >= 0.5, and AUC the
trapezoidal area under the success curve at thresholds 0, 0.05, ..., 1.0.
Ground-truth maps (`gt`) are built by `evaluation.annotations`. ICL's
fixed-threshold variant is available as `protocol="fixed"` (see
`fixed_prediction`).

Everything here is NumPy on the host, float32 for the map math, vectorised
over a batch `[N, h, w]` of maps (no Python loop over samples). A VGG-SS-sized
set (5,158 maps) is post-processed, scored and summarised in about 1.5 s on
2 CPU cores (`benchmarks/eval_postprocess.py`).

Interface:

* `evaluate_maps(responses, gt_maps, protocol=..., ...)` -> `(cious, summary)`
  runs the whole pipeline in one call (in cache-sized blocks);
  `score_maps` returns only the per-sample cIoUs, `pointing_hits` the
  pointing game's hits.
* `summarize(cious)` -> JSON-able dict: `ciou` (cIoU@threshold), `auc`,
  `success_curve`, `thresholds`, percentile-bootstrap `ciou_ci95` /
  `auc_ci95`, `n`.
* Running a model over a split and yielding `(name, value)` pairs is the job
  of `evaluation.evaluators`; plots and reports are `evaluation.plots`'s.
  This module holds no state.

Interpretations chosen where the protocol leaves room:

* cIoUs are returned as float64: the official code divides float64 sums and
  compares with thresholds `0.05 * i` (0.15000000000000002, ...); a cIoU of
  exactly 3/20 fails the 0.15 threshold in float64 but would pass in float32.
  The thresholds are `0.05 * i` (equal to `np.linspace(0, 1, 21)`).
* `ciou` binarises its `pred` at `>= 0.5` first, as the official
  `cal_CIOU(pred, gt, 0.5)` does (a no-op for 0/1 predictions). 0/0 (empty gt
  and empty prediction) is defined as 0.0 where the official code gives nan,
  which also fails every threshold; an empty gt with a non-empty prediction
  is 0/n = 0 as in the official code.
* Constant maps, median protocol: exact float32 arithmetic of the official
  code, `pred = 1 - (-c) = 1 + c`: all on for c >= 0, all off for c < 0
  except when `1 + c` rounds to 1.0 in float32 (|c| <= 2**-25), then all on.
* Fixed protocol (ICL Eq. 1-2, threshold delta_v): the response map is
  min-max normalised at feature resolution (a constant map normalises to all
  zeros, so nothing is above a threshold >= 0). Default order
  `"upsample_first"`: bilinear upsampling of the normalised map, then
  `> threshold`. `"threshold_first"`: `> threshold` at feature resolution,
  bilinear upsampling of the 0/1 map, keep `>= 0.5`. Bilinear upsampling is
  the same half-pixel resize (identical to PyTorch `align_corners=False`).
* Bootstrap: percentile interval (2.5, 97.5) of the statistic over
  `n_bootstrap` resamples with replacement of the per-sample cIoUs, drawn
  with `np.random.default_rng(seed)`.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
from typing import Any

import numpy as np

from soundloc_jax.evaluation.resize import resize_bilinear, size_hw

DEFAULT_SIZE = 224
# Success-curve thresholds exactly as the official code builds them.
AUC_THRESHOLDS = tuple(0.05 * i for i in range(21))
# Maps per block in `score_maps`: [block, 224, 224] float32 temporaries stay
# cache-sized (3 MB each); larger blocks are measurably slower.
_BLOCK = 16

# ---------------------------------------------------------------------------
# Resize and normalisation.
# ---------------------------------------------------------------------------


def _minmax(x: np.ndarray):
  """Per-map min and max over the last two axes, keepdims."""
  return (x.min(axis=(-2, -1), keepdims=True),
          x.max(axis=(-2, -1), keepdims=True))


def normalize(x) -> np.ndarray:
  """LVS `normalize_img`: per-map `(x - min) / (max - min)`, float32.

  A map with `max - min == 0` is returned unchanged.
  """
  x = np.asarray(x, dtype=np.float32)
  lo, hi = _minmax(x)
  den = hi - lo
  flat = den == 0
  out = (x - lo) / np.where(flat, np.float32(1), den)
  return np.where(flat, x, out)


def _localization_batch(response, size) -> np.ndarray:
  """`localization_map` for `[N, h, w]`, computed in place on the resize."""
  h = resize_bilinear(response, size)
  n = h.shape[0]
  flat = h.reshape(n, -1)
  hi = flat.max(axis=-1, keepdims=True)
  lo = flat.min(axis=-1, keepdims=True)
  # normalize(-h) with min(-h) = -max(h), max(-h) = -min(h): the official
  # `(-h - (-hi)) / (-lo - (-hi))` is bit-identical to `(hi - h) / (hi - lo)`.
  den = hi - lo
  const = den[:, 0] == 0
  saved = flat[const].copy() if const.any() else None
  np.subtract(hi, flat, out=flat)
  np.divide(flat, np.where(den == 0, np.float32(1), den), out=flat)
  np.subtract(np.float32(1), flat, out=flat)
  if saved is not None:
    flat[const] = np.float32(1) + saved  # 1 - normalize(-c) = 1 - (-c)
  return h


def localization_map(response, size=DEFAULT_SIZE) -> np.ndarray:
  """`1 - normalize(-resize_bilinear(response, size))`, float32, per map.

  `response` is `[h, w]` or `[N, h, w]` (higher = more likely sounding). The
  result is in [0, 1] with 1 at the maximum; a constant map c gives 1 + c.
  """
  r = np.asarray(response, dtype=np.float32)
  if r.ndim == 2:
    return _localization_batch(r[None], size)[0]
  if r.ndim != 3:
    raise ValueError(f"expected [h, w] or [N, h, w] maps, got {r.shape}")
  return _localization_batch(r, size)


# ---------------------------------------------------------------------------
# Binarisation.
# ---------------------------------------------------------------------------

# Largest float32 below 1: `p > t or p >= 1` is `p > min(t, _BELOW_ONE)`.
_BELOW_ONE = np.nextafter(np.float32(1), np.float32(0))


def _median_on(pred: np.ndarray) -> np.ndarray:
  """Bool `[N, K]` median-protocol mask of flattened `[N, K]` maps."""
  k = pred.shape[-1] // 2
  t = np.partition(pred, k, axis=-1)[:, k:k + 1]  # == np.sort(...)[:, k]
  return pred > np.minimum(t, _BELOW_ONE)


def median_prediction(pred) -> np.ndarray:
  """LVS median threshold of `localization_map` outputs; float32 0/1.

  Per map: `t = sort(pred.flatten())[H*W // 2]`; on = `pred > t` or
  `pred >= 1` (the official `pred[pred > t] = 1; pred[pred < 1] = 0`).
  """
  p = np.asarray(pred, dtype=np.float32)
  if p.ndim < 2:
    raise ValueError(f"expected [S, S] or [N, S, S] maps, got {p.shape}")
  on = _median_on(p.reshape((-1, p.shape[-2] * p.shape[-1])))
  return on.reshape(p.shape).astype(np.float32)


def fixed_prediction(response, size=DEFAULT_SIZE, threshold=0.5,
                     order="upsample_first") -> np.ndarray:
  """ICL fixed-threshold prediction (Eq. 1-2); float32 0/1 `[.., H, W]`.

  `response`: raw response maps `[h, w]` or `[N, h, w]` at feature
  resolution. Each is min-max normalised (a constant map becomes all zeros).
  `order="upsample_first"` (the default): bilinear upsample of the
  normalised map to `size`, on = `> threshold`. `order="threshold_first"`:
  on = `> threshold` at feature resolution, bilinear upsample of the 0/1 map,
  keep `>= 0.5`.
  """
  r = np.asarray(response, dtype=np.float32)
  lo, hi = _minmax(r)
  den = hi - lo
  flat = den == 0
  norm = np.where(flat, np.float32(0),
                  (r - lo) / np.where(flat, np.float32(1), den))
  thr = np.float32(threshold)
  if order == "upsample_first":
    return (resize_bilinear(norm, size) > thr).astype(np.float32)
  if order == "threshold_first":
    on = (norm > thr).astype(np.float32)
    return (resize_bilinear(on, size) >= np.float32(0.5)).astype(np.float32)
  raise ValueError(f"unknown order {order!r}; "
                   "use 'upsample_first' or 'threshold_first'")


def binarize(maps, protocol="median", threshold=0.5, order="upsample_first",
             size=None) -> np.ndarray:
  """Binary predictions, float32 0/1.

  * `protocol="median"` (LVS): `maps` are `localization_map` outputs
    `[N, S, S]` (or one map); see `median_prediction`. `threshold`, `order`
    and `size` are unused.
  * `protocol="fixed"` (ICL): `maps` are raw response maps at feature
    resolution; see `fixed_prediction` (`size` defaults to 224, `order`
    defaults to `"upsample_first"`).
  """
  if protocol == "median":
    return median_prediction(maps)
  if protocol == "fixed":
    return fixed_prediction(maps, DEFAULT_SIZE if size is None else size,
                            threshold, order)
  raise ValueError(f"unknown protocol {protocol!r}; use 'median' or 'fixed'")


# ---------------------------------------------------------------------------
# Scores.
# ---------------------------------------------------------------------------


def _float32_sums_exact(gt: np.ndarray) -> bool:
  """True if float32 sums over rows of `gt` (and its subsets) are exact.

  Holds for integer-valued or half-integer-valued maps whose row totals stay
  far below 2**24 (all official gt maps: 0/1 or 0/0.5/1).
  """
  k = gt.shape[-1]
  if gt.dtype == np.bool_:
    return k < 2**23
  if gt.dtype.kind not in "uif" or gt.size == 0:
    return False
  lo, hi = gt.min(), gt.max()
  bound = max(abs(float(lo)), abs(float(hi)))
  if not math.isfinite(bound) or bound * k * 2 >= 2**23:
    return False
  if gt.dtype.kind in "ui":
    return True
  twice = gt * gt.dtype.type(2)
  return bool(np.array_equal(twice, np.rint(twice)))


def _ciou_flat(on: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """cIoU of bool `[N, K]` masks against `[N, K]` gt (any numeric dtype).

  The sums are exact (float32 SIMD sums when every partial sum is
  representable, float64 accumulation otherwise), so the float64 ratio is
  the official code's value.
  """
  if _float32_sums_exact(gt):
    onf = on.astype(np.float32)
    g = gt.astype(np.float32, copy=False)
    inter = np.einsum("nk,nk->n", onf, g).astype(np.float64)
    gsum = np.einsum("nk->n", g).astype(np.float64)
    false_pos = np.einsum("nk,nk->n", onf, (gt == 0).astype(np.float32))
    union = gsum + false_pos.astype(np.float64)
  else:
    inter = np.add.reduce(np.where(on, gt, 0), axis=-1, dtype=np.float64)
    # union = sum(gt) + #(on & gt == 0) = sum(where(gt == 0, on, gt)).
    union = np.add.reduce(np.where(gt == 0, on, gt), axis=-1,
                          dtype=np.float64)
  out = np.zeros(inter.shape, np.float64)
  np.divide(inter, union, out=out, where=union != 0)
  return out


def ciou(pred, gt) -> np.ndarray | float:
  """Consensus IoU per map: `sum(p*gt) / (sum(gt) + sum(p*(gt == 0)))`.

  `pred` is binarised at `>= 0.5` first (as the official `cal_CIOU`); `gt`
  in [0, 1]. Sums (float64 accumulation) and the ratio are float64. 0/0 is
  0.0. Returns a float64 array `[N]` for a batch, a Python float for a
  single map.
  """
  p = np.asarray(pred)
  g = np.asarray(gt)
  if p.shape != g.shape:
    raise ValueError(f"pred {p.shape} and gt {g.shape} differ in shape")
  if p.ndim < 2:
    raise ValueError(f"expected [S, S] or [N, S, S] maps, got {p.shape}")
  k = p.shape[-2] * p.shape[-1]
  out = _ciou_flat(p.reshape(-1, k) >= 0.5, g.reshape(-1, k))
  return float(out[0]) if p.ndim == 2 else out.reshape(p.shape[:-2])


def _success_counts(cious: np.ndarray, thresholds) -> np.ndarray:
  """`[n, T]` bool: cIoU >= t for each threshold (float64 comparisons)."""
  return cious[:, None] >= np.asarray(thresholds, np.float64)[None, :]


def _trapezoid(y, x) -> np.ndarray:
  trap = getattr(np, "trapezoid", None) or np.trapz
  return trap(y, x)


def summarize(cious, success_threshold=0.5, n_bootstrap=1000, seed=0
              ) -> dict[str, Any]:
  """Test-set scores from per-sample cIoUs; plain Python types (JSON-able).

  Returns `{"ciou": fraction with cIoU >= success_threshold, "auc":
  trapezoidal area of the success curve over thresholds 0.05 * i, i = 0..20,
  "success_curve": [21 floats], "thresholds": [21 floats], "ciou_ci95": [lo,
  hi], "auc_ci95": [lo, hi], "n": int, "success_threshold": float,
  "n_bootstrap": int}`. The intervals are 2.5/97.5 percentiles over
  `n_bootstrap` resamples (None when `n_bootstrap <= 0`).
  """
  c = np.asarray(cious, dtype=np.float64).reshape(-1)
  n = int(c.size)
  if n == 0:
    raise ValueError("summarize needs at least one cIoU")
  thresholds = np.asarray(AUC_THRESHOLDS, np.float64)
  hits = _success_counts(c, thresholds)  # [n, 21]
  success = c >= float(success_threshold)  # [n]
  curve = hits.mean(axis=0)
  auc = float(_trapezoid(curve, thresholds))
  out = {
      "ciou": float(success.mean()),
      "auc": auc,
      "success_curve": [float(v) for v in curve],
      "thresholds": [float(v) for v in thresholds],
      "ciou_ci95": None,
      "auc_ci95": None,
      "n": n,
      "success_threshold": float(success_threshold),
      "n_bootstrap": int(max(n_bootstrap, 0)),
  }
  if n_bootstrap > 0:
    counts = resample_counts(np.random.default_rng(seed), n, n_bootstrap)
    boot_ciou = counts @ success.astype(np.float64) / n
    boot_curve = counts @ hits.astype(np.float64) / n  # [B, 21]
    boot_auc = _trapezoid(boot_curve, thresholds)
    out["ciou_ci95"] = [float(v) for v in np.percentile(boot_ciou, [2.5, 97.5])]
    out["auc_ci95"] = [float(v) for v in np.percentile(boot_auc, [2.5, 97.5])]
  return out


def resample_counts(rng, n: int, num: int) -> np.ndarray:
  """`[num, n]` float64: `counts[b, i]` is how often sample `i` is drawn in
  resample `b` of `n` samples with replacement, the draws being
  `rng.integers(0, n, (num, n))`."""
  idx = rng.integers(0, n, size=(num, n))
  offsets = (np.arange(num, dtype=np.int64) * n)[:, None]
  return np.bincount((idx + offsets).ravel(), minlength=num * n).reshape(num, n).astype(
      np.float64)


def _score_block(resp, gt, protocol, size, threshold, order) -> np.ndarray:
  gt = np.asarray(gt)
  n = gt.shape[0]
  if protocol == "median":
    loc = _localization_batch(resp, size)
    on = _median_on(loc.reshape(n, -1))
  else:
    on = binarize(resp, protocol=protocol, threshold=threshold, order=order,
                  size=size).reshape(n, -1) >= 0.5
  if on.shape[-1] != gt[0].size:
    raise ValueError(f"predictions of size {size} do not match gt maps "
                     f"{gt.shape[1:]}")
  return _ciou_flat(on, gt.reshape(n, -1))


def score_maps(responses, gt_maps, protocol="median", size=None,
               threshold=0.5, order="upsample_first", block_size=_BLOCK,
               num_threads=None) -> np.ndarray:
  """Per-sample cIoUs (float64 `[N]`) of response maps against gt maps.

  `responses`: `[N, h, w]` raw response maps (higher = sounding).
  `gt_maps`: `[N, S, S]` (any numeric dtype; uint8 / bool are cheapest; a
  list of maps works too). `size` defaults to `S`. Processed in blocks of
  `block_size` maps on `num_threads` threads (default: the CPU count, at
  most 4); NumPy releases the GIL in the heavy loops. The result does not
  depend on the block size or thread count.
  """
  resp = np.asarray(responses, dtype=np.float32)
  if resp.ndim == 2:
    resp = resp[None]
  if resp.ndim != 3:
    raise ValueError(f"expected [N, h, w] response maps, got {resp.shape}")
  n = resp.shape[0]
  if len(gt_maps) != n:
    raise ValueError(f"{n} response maps but {len(gt_maps)} gt maps")
  if protocol not in ("median", "fixed"):
    raise ValueError(f"unknown protocol {protocol!r}; use 'median' or 'fixed'")
  if size is None:
    size = np.asarray(gt_maps[0]).shape[-1]
  out = np.empty((n,), np.float64)
  starts = range(0, n, max(int(block_size), 1))

  def run(a):
    b = min(a + block_size, n)
    out[a:b] = _score_block(resp[a:b], gt_maps[a:b], protocol, size,
                            threshold, order)

  if num_threads is None:
    num_threads = min(os.cpu_count() or 1, 4)
  if num_threads > 1 and len(starts) > 1:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      list(pool.map(run, starts))
  else:
    for a in starts:
      run(a)
  return out


def peak_indices(responses, size, block_size=_BLOCK) -> np.ndarray:
  """Per map, the row-major index of the maximum of the response map
  bilinearly resized to `size` (as the protocol resizes it); the first
  maximum wins a tie. Resized in blocks of `block_size` maps to bound memory.
  `responses` `[N, h, w]` (or one `[h, w]`); int64 `[N]`."""
  resp = np.asarray(responses, dtype=np.float32)
  if resp.ndim == 2:
    resp = resp[None]
  n = resp.shape[0]
  out = np.empty((n,), np.int64)
  for a in range(0, n, max(int(block_size), 1)):
    b = min(a + block_size, n)
    out[a:b] = resize_bilinear(resp[a:b], size).reshape(b - a, -1).argmax(axis=1)
  return out


def pointing_hits(responses, gt_maps, size=None, block_size=_BLOCK) -> np.ndarray:
  """Pointing game (Zhang et al., 2016): per sample 1.0 if the peak of the
  response map (`peak_indices`: bilinearly resized to the gt maps' size `S`,
  the first peak in row-major order on a tie) lies on an annotated pixel
  (gt > 0), else 0.0. Not part of either paper's protocol: it scores WHERE a
  map points, whatever the extent of its hot region, which cIoU scores as
  well. `responses` `[N, h, w]`, `gt_maps` `[N, S, S]`; float64 `[N]`."""
  n = len(responses) if np.ndim(responses) == 3 else 1
  if len(gt_maps) != n:
    raise ValueError(f"{n} response maps but {len(gt_maps)} gt maps")
  if size is None:
    size = np.asarray(gt_maps[0]).shape[-1]
  if np.size(gt_maps[0]) != size_hw(size)[0] * size_hw(size)[1]:
    raise ValueError(f"maps resized to {size} do not match gt maps {np.shape(gt_maps[0])}")
  peaks = peak_indices(responses, size, block_size)
  gt = np.asarray(gt_maps).reshape(n, -1)
  return (gt[np.arange(n), peaks] > 0).astype(np.float64)


def mean_ci95(values, n_bootstrap=1000, seed=0) -> tuple[float, float, float]:
  """`(mean, lo, hi)`: the mean of per-sample `values` and the 2.5 / 97.5
  percentiles of the means of `n_bootstrap` resamples (as `summarize`)."""
  values = np.asarray(values, np.float64)
  idx = np.random.default_rng(seed).integers(0, len(values), (n_bootstrap, len(values)))
  lo, hi = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
  return float(values.mean()), float(lo), float(hi)


def evaluate_maps(responses, gt_maps, protocol="median", size=None,
                  threshold=0.5, order="upsample_first",
                  success_threshold=0.5, n_bootstrap=1000, seed=0):
  """The whole pipeline: `(per_sample_cious [N] float64, summary dict)`.

  See `score_maps` for the inputs and `summarize` for the summary.
  """
  c = score_maps(responses, gt_maps, protocol=protocol, size=size,
                 threshold=threshold, order=order)
  return c, summarize(c, success_threshold=success_threshold,
                      n_bootstrap=n_bootstrap, seed=seed)
