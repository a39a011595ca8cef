"""Metrics on object annotations beyond the official protocol.

The silent-object test (`silent_object_scores`) asks whether a map is hotter
on the sounding object than on the silent ones in the same image. Benchmarks
that store the silent objects' boxes (`stamps`: `silent_boxes`) get it from
the `silent_object` evaluator; no paper reports it. A map that ignores the
image (constant) and a random map both score 0.5, so it separates "sees the
sounding object" from "points at salient things", which pointing and cIoU
cannot when every object is salient. `peak_on_silent_object` says where a
map's peak goes when pointing misses: to a silent object, or elsewhere
(background, clutter, the border).
"""

from __future__ import annotations

import numpy as np

from soundloc_jax.evaluation.annotations import MAX_SILENT_OBJECTS
from soundloc_jax.evaluation.protocol import _BLOCK, peak_indices
from soundloc_jax.evaluation.resize import resize_bilinear, size_hw


def pad_silent_maps(silent_maps) -> tuple[np.ndarray, np.ndarray]:
  """N arrays `[k_i, S, S]` (k_i <= MAX_SILENT_OBJECTS) -> `(maps [N, K, S, S],
  valid [N, K])` with K = MAX_SILENT_OBJECTS, zero maps where invalid."""
  first = np.asarray(silent_maps[0])
  size = first.shape[-2:]
  maps = np.zeros((len(silent_maps), MAX_SILENT_OBJECTS) + size, np.float32)
  valid = np.zeros((len(silent_maps), MAX_SILENT_OBJECTS), bool)
  for i, m in enumerate(silent_maps):
    m = np.asarray(m, np.float32).reshape((-1,) + size)
    if len(m) > MAX_SILENT_OBJECTS:
      raise ValueError(f"sample {i} has {len(m)} silent objects, more than "
                       f"{MAX_SILENT_OBJECTS}")
    maps[i, :len(m)], valid[i, :len(m)] = m, True
  return maps, valid


def silent_object_scores(responses, sounding_maps, silent_maps, silent_valid=None, size=None,
                         block_size=_BLOCK) -> np.ndarray:
  """Per sample, the fraction of its silent objects whose mean heat is below
  the sounding object's (a tie counts 1/2). An object's mean heat is the mean
  of the response map, bilinearly resized to the maps' size `S` (as the
  protocol resizes it), weighted by the object's map. Invariant to any
  increasing affine map of the response (so to the protocol's min-max
  normalisation).

  `responses` `[N, h, w]`; `sounding_maps` `[N, S, S]`; `silent_maps` either
  `[N, K, S, S]` with `silent_valid` `[N, K]` bool, or N arrays `[k_i, S, S]`
  (padded by `pad_silent_maps`). Every sample needs a silent object and every
  object a non-empty map (ValueError otherwise). Returns float64 `[N]`."""
  resp = np.asarray(responses, dtype=np.float32)
  if resp.ndim == 2:
    resp = resp[None]
  n = resp.shape[0]
  if silent_valid is None:
    silent_maps, silent_valid = pad_silent_maps(silent_maps)
  silent_maps = np.asarray(silent_maps, np.float32)
  silent_valid = np.asarray(silent_valid, bool)
  sounding_maps = np.asarray(sounding_maps, np.float32)
  if len(sounding_maps) != n or len(silent_maps) != n:
    raise ValueError(f"{n} response maps but {len(sounding_maps)} sounding and "
                     f"{len(silent_maps)} silent map sets")
  missing = np.flatnonzero(~silent_valid.any(axis=1))
  if missing.size:
    raise ValueError(f"sample {missing[0]} has no silent object map")
  if size is None:
    size = sounding_maps.shape[-1]
  masks = np.concatenate([sounding_maps[:, None], silent_maps], axis=1)  # [N, 1 + K, S, S]
  masks = masks.reshape(n, masks.shape[1], -1).astype(np.float64)
  area = masks.sum(axis=2)
  used = np.concatenate([np.ones((n, 1), bool), silent_valid], axis=1)
  empty = np.argwhere(used & (area <= 0))
  if empty.size:
    raise ValueError(f"sample {empty[0][0]} has an empty object map")
  out = np.empty((n,), np.float64)
  for a in range(0, n, max(int(block_size), 1)):  # blocks bound the resized maps' memory
    b = min(a + block_size, n)
    heat = resize_bilinear(resp[a:b], size).reshape(b - a, -1).astype(np.float64)
    mean = np.einsum("nkp,np->nk", masks[a:b], heat) / np.where(used[a:b], area[a:b], 1.0)
    wins = (mean[:, :1] > mean[:, 1:]) + 0.5 * (mean[:, :1] == mean[:, 1:])
    valid = silent_valid[a:b]
    out[a:b] = np.sum(wins * valid, axis=1) / np.sum(valid, axis=1)
  return out


def peak_on_silent_object(responses, sounding_maps, silent_maps, silent_valid,
                          size=None) -> np.ndarray:
  """Per sample 1.0 if the peak of the response map (`protocol.peak_indices`,
  as pointing finds it) lies on a silent object's pixel and not on the
  sounding object's, else 0.0. With pointing, it splits the maps' peaks into
  sounding object / silent object / elsewhere. Shapes as
  `silent_object_scores` with padded maps (`silent_maps` `[N, K, S, S]`,
  `silent_valid` `[N, K]`); float64 `[N]`."""
  sounding = np.asarray(sounding_maps)
  silent = np.asarray(silent_maps)
  n = len(sounding)
  size = sounding.shape[-1] if size is None else size
  if sounding.shape[-2:] != size_hw(size) or silent.shape[-2:] != size_hw(size):
    raise ValueError(f"maps resized to {size} do not match object maps {sounding.shape[-2:]} / "
                     f"{silent.shape[-2:]}")
  peaks = peak_indices(responses, size)
  if len(peaks) != n or len(silent) != n:
    raise ValueError(f"{len(peaks)} response maps but {n} sounding and {len(silent)} silent "
                     "map sets")
  rows = np.arange(n)
  on_sounding = sounding.reshape(n, -1)[rows, peaks] > 0
  on_silent = (silent.reshape(n, silent.shape[1], -1)[rows, :, peaks] > 0) & np.asarray(
      silent_valid, bool)
  return (on_silent.any(axis=1) & ~on_sounding).astype(np.float64)
