"""OpenCV-exact bilinear resizing of `[h, w]` / `[N, h, w]` float32 maps (the
protocol's upsampling of response maps, and of overlays and gt contours).

`resize_bilinear` reproduces `cv2.resize(m, (W, H), interpolation=
cv2.INTER_LINEAR)` on float32 without OpenCV:
* Resizing evaluates the separable interpolation `A @ m @ B.T` as OpenCV's
  float path does: weights computed like OpenCV (`fx = (float)((dx + 0.5) *
  scale - 0.5)`, `scale = 1 / (dst / src)` in double), horizontal pass first,
  each output `a * w0 + b * w1` in float32 with separate multiply and add
  (OpenCV's scalar / SSE arithmetic). A BLAS matmul of the same matrices
  differs by 1 ulp on about a third of the pixels (fused multiply-add),
  which can move pixels across a median tie, so the two-tap form is used.
  The formula is checked against a per-pixel reference in the tests; OpenCV
  itself is not installed here. OpenCV's special case of an exact 2x downscale
  (INTER_AREA) is not reproduced; it agrees up to rounding.
"""

from __future__ import annotations

import numpy as np


def size_hw(size) -> tuple[int, int]:
  """`(H, W)` of a size given as an int (square) or a pair."""
  if isinstance(size, (tuple, list)):
    h, w = size
    return int(h), int(w)
  return int(size), int(size)


def _linear_taps(dst: int, src: int):
  """OpenCV INTER_LINEAR taps along one axis: (idx0, idx1, w0, w1)."""
  if dst <= 0 or src <= 0:
    raise ValueError(f"sizes must be positive, got dst={dst}, src={src}")
  inv_scale = dst / src  # double, as cv::resize computes it
  scale = 1.0 / inv_scale
  f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(
      np.float32)
  s = np.floor(f).astype(np.int64)
  f = (f - s.astype(np.float32)).astype(np.float32)
  low = s < 0
  s[low] = 0
  f[low] = 0
  high = s >= src - 1
  s[high] = src - 1
  f[high] = 0
  s1 = np.minimum(s + 1, src - 1)
  w0 = (np.float32(1) - f).astype(np.float32)
  return s, s1, w0, f


def interpolation_matrix(dst: int, src: int) -> np.ndarray:
  """The `[dst, src]` float32 matrix of OpenCV's linear resize along an axis.

  `resize_bilinear(m)` equals `A @ m @ B.T` with `A = interpolation_matrix(H,
  h)`, `B = interpolation_matrix(W, w)` up to float rounding (every row has
  at most two non-zeros summing to 1).
  """
  s0, s1, w0, w1 = _linear_taps(dst, src)
  m = np.zeros((dst, src), np.float32)
  rows = np.arange(dst)
  np.add.at(m, (rows, s0), w0)
  np.add.at(m, (rows, s1), w1)
  return m


def resize_bilinear(maps, size) -> np.ndarray:
  """Bilinear resize of `[h, w]` or `[N, h, w]` maps to `size` (int or (H, W)).

  Reproduces OpenCV `cv2.resize(m, (W, H), interpolation=cv2.INTER_LINEAR)`
  on float32: source coordinate `(dst + 0.5) * (src / dst) - 0.5`, indices
  below 0 use pixel 0, indices past the end use the last pixel. Horizontal
  pass then vertical pass, each `a * w0 + b * w1` in float32. Resizing to the
  same size is the identity. Returns float32.
  """
  m = np.asarray(maps, dtype=np.float32)
  if m.ndim < 2:
    raise ValueError(f"expected [h, w] or [N, h, w] maps, got shape {m.shape}")
  out_h, out_w = size_hw(size)
  in_h, in_w = m.shape[-2:]
  if (out_h, out_w) == (in_h, in_w):
    return m.copy()
  xs0, xs1, xw0, xw1 = _linear_taps(out_w, in_w)
  ys0, ys1, yw0, yw1 = _linear_taps(out_h, in_h)
  # Horizontal pass: [..., h, W].
  tmp = np.take(m, xs0, axis=-1)
  tmp *= xw0
  b = np.take(m, xs1, axis=-1)
  b *= xw1
  tmp += b
  # Vertical pass: [..., H, W].
  out = np.take(tmp, ys0, axis=-2)
  out *= yw0[:, None]
  b = np.take(tmp, ys1, axis=-2)
  b *= yw1[:, None]
  out += b
  return out
