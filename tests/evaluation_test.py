"""Tests for soundloc_jax.evaluation (hand-computed expectations)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from soundloc_jax.evaluation import annotations, plots, resize
from soundloc_jax.evaluation import protocol as ev


# ---------------------------------------------------------------------------
# resize_bilinear
# ---------------------------------------------------------------------------


def _opencv_linear_reference(m, out_h, out_w):
  """Slow per-pixel OpenCV INTER_LINEAR (half-pixel centres, clamped)."""
  in_h, in_w = m.shape

  def taps(o, n_in, n_out):
    src = (o + 0.5) * (n_in / n_out) - 0.5
    i0 = math.floor(src)
    frac = src - i0
    if i0 < 0:
      i0, frac = 0, 0.0
    if i0 >= n_in - 1:
      i0, frac = n_in - 1, 0.0
    return i0, min(i0 + 1, n_in - 1), frac

  out = np.zeros((out_h, out_w), np.float64)
  for oy in range(out_h):
    y0, y1, fy = taps(oy, in_h, out_h)
    for ox in range(out_w):
      x0, x1, fx = taps(ox, in_w, out_w)
      top = (1 - fx) * m[y0, x0] + fx * m[y0, x1]
      bottom = (1 - fx) * m[y1, x0] + fx * m[y1, x1]
      out[oy, ox] = (1 - fy) * top + fy * bottom
  return out


@pytest.mark.parametrize("in_shape,out_shape", [((3, 3), (7, 7)),
                                                ((4, 4), (16, 16)),
                                                ((3, 5), (7, 11)),
                                                ((14, 14), (224, 224))])
def test_resize_matches_opencv_formula(in_shape, out_shape):
  rng = np.random.default_rng(0)
  m = rng.standard_normal(in_shape).astype(np.float32)
  got = resize.resize_bilinear(m, out_shape if out_shape[0] != out_shape[1]
                           else out_shape[0])
  want = _opencv_linear_reference(m.astype(np.float64), *out_shape)
  assert got.dtype == np.float32 and got.shape == out_shape
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_resize_known_values_and_identity():
  m = np.array([[0, 1], [2, 3]], np.float32)
  w = np.array([0, 0.25, 0.75, 1.0])  # clamped half-pixel weights, 2 -> 4
  want = 2 * w[:, None] + w[None, :]
  np.testing.assert_array_equal(resize.resize_bilinear(m, 4), want)
  r = np.random.default_rng(1).standard_normal((3, 14, 14)).astype(np.float32)
  np.testing.assert_array_equal(resize.resize_bilinear(r, 14), r)


def test_resize_batch_equals_single():
  r = np.random.default_rng(2).standard_normal((5, 14, 14)).astype(np.float32)
  batch = resize.resize_bilinear(r, 224)
  for i in range(5):
    np.testing.assert_array_equal(batch[i], resize.resize_bilinear(r[i], 224))


# ---------------------------------------------------------------------------
# localization_map and the median protocol
# ---------------------------------------------------------------------------


def _box_map(size, y0, y1, x0, x1, value=1.0):
  m = np.zeros((size, size), np.float32)
  m[y0:y1, x0:x1] = value
  return m


def test_oracle_and_inverted_heatmap():
  gt = _box_map(16, 4, 12, 2, 10)  # 64 of 256 pixels
  oracle = ev.binarize(ev.localization_map(gt, 16))
  np.testing.assert_array_equal(oracle, gt)
  assert ev.ciou(oracle, gt) == 1.0
  inverted = ev.binarize(ev.localization_map(-gt, 16))
  np.testing.assert_array_equal(inverted, 1 - gt)  # ones at t = 1 stay on
  assert ev.ciou(inverted, gt) == 0.0


def test_median_pixels_equal_to_one_stay_on():
  # 144 of 256 pixels are 1: sorted[128] = t = 1; nothing is > t, but the
  # pixels equal to 1 stay on.
  gt = _box_map(16, 2, 14, 2, 14)
  pred = ev.binarize(ev.localization_map(gt, 16))
  np.testing.assert_array_equal(pred, gt)


def test_median_ties_are_strict():
  # Values 0 (120 px), 0.25 (20 px), 0.5 (60 px), 1 (56 px) in raster
  # order: sorted[128] = 0.25, so the 0.25 pixels (== t) are off.
  flat = np.concatenate([np.zeros(120), np.full(20, 0.25), np.full(60, 0.5),
                         np.ones(56)]).astype(np.float32)
  perm = np.random.default_rng(3).permutation(256)
  h = flat[perm].reshape(16, 16)
  pred = ev.binarize(ev.localization_map(h, 16))
  want = (flat[perm] >= 0.5).reshape(16, 16).astype(np.float32)
  np.testing.assert_array_equal(pred, want)
  # Values 0 (100), 0.5 (100), 1 (56): t = 0.5, only the ones are on.
  flat = np.concatenate([np.zeros(100), np.full(100, 0.5),
                         np.ones(56)]).astype(np.float32)
  pred = ev.binarize(ev.localization_map(flat.reshape(16, 16), 16))
  np.testing.assert_array_equal(pred.reshape(-1), (flat == 1).astype(float))


@pytest.mark.parametrize("c,on", [(0.3, 1.0), (0.0, 1.0), (-0.5, 0.0),
                                  (-2.0, 0.0)])
def test_constant_map(c, on):
  h = np.full((4, 4), c, np.float32)
  loc = ev.localization_map(h, 8)
  np.testing.assert_array_equal(loc, np.full((8, 8), np.float32(1 + c)))
  np.testing.assert_array_equal(ev.binarize(loc), np.full((8, 8), on))


def test_median_threshold_matches_sort():
  rng = np.random.default_rng(4)
  raw = rng.standard_normal((6, 14, 14)).astype(np.float32)
  raw[3] = np.round(raw[3])  # many ties after resizing
  raw[4, :, :7] = raw[4, :, 7:]  # symmetric map
  loc = ev.localization_map(raw, 224)
  got = ev.binarize(loc)
  for i in range(6):
    p = loc[i].copy()
    t = np.sort(p.flatten())[224 * 224 // 2]
    p[p > t] = 1
    p[p < 1] = 0
    np.testing.assert_array_equal(got[i], p)


def test_localization_map_range_per_map():
  rng = np.random.default_rng(5)
  raw = rng.standard_normal((3, 14, 14)).astype(np.float32) * [[[1]], [[10]],
                                                               [[0.01]]]
  loc = ev.localization_map(raw, 224)
  assert loc.dtype == np.float32
  np.testing.assert_array_equal(loc.min(axis=(1, 2)), 0)
  np.testing.assert_array_equal(loc.max(axis=(1, 2)), 1)
  up = resize.resize_bilinear(raw, 224)
  for i in range(3):  # the official `1 - normalize_img(-h)`, bit for bit
    x = -up[i]
    vmin, vmax = x.min(), x.max()
    np.testing.assert_array_equal(loc[i], 1 - (x - vmin) / (vmax - vmin))


# ---------------------------------------------------------------------------
# ICL fixed protocol
# ---------------------------------------------------------------------------


def test_fixed_protocol_both_orders():
  # Normalised [[0, 1/3], [2/3, 1]]; 2 -> 4 weights w = [0, .25, .75, 1], so
  # upsample_first values are (2 * wy + wx) / 3, on where > 0.6.
  r = np.array([[0, 1], [2, 3]], np.float32)
  up_first = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1],
                       [1, 1, 1, 1]], np.float32)
  # threshold_first: [[0, 0], [1, 1]] upsampled is wy in each row, >= 0.5.
  thr_first = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1],
                        [1, 1, 1, 1]], np.float32)
  got = ev.binarize(r, protocol="fixed", threshold=0.6, size=4)
  np.testing.assert_array_equal(got, up_first)
  got = ev.fixed_prediction(r, 4, 0.6, order="threshold_first")
  np.testing.assert_array_equal(got, thr_first)
  # Scale/offset invariance and the constant-map rule.
  np.testing.assert_array_equal(
      ev.fixed_prediction(5 * r - 7, 4, 0.6), up_first)
  const = np.full((2, 3, 3), 0.7, np.float32)
  for order in ("upsample_first", "threshold_first"):
    assert ev.fixed_prediction(const, 6, 0.5, order).sum() == 0
  assert ev.binarize(r, protocol="fixed").shape == (224, 224)
  with pytest.raises(ValueError):
    ev.fixed_prediction(r, 4, 0.5, order="sideways")


# ---------------------------------------------------------------------------
# Ground-truth maps
# ---------------------------------------------------------------------------


_FLICKR_XML = """<?xml version="1.0"?>
<annotation>
  <filename>10000.jpg</filename>
  <object>
    <bbox><label>a</label><xmin>32</xmin><ymin>64</ymin><xmax>128</xmax><ymax>160</ymax></bbox>
  </object>
  <object>
    <bbox><label>b</label><xmin> 96 </xmin><ymin>100</ymin><xmax>200</xmax><ymax>230</ymax></bbox>
  </object>
</annotation>
"""


def test_flickr_two_annotators(tmp_path):
  # 224 * v / 256 truncated: 32->28, 64->56, 128->112, 160->140; 96->84,
  # 100->87 (87.5), 200->175, 230->201 (201.25).
  want = np.zeros((224, 224), np.float32)
  want[56:140, 28:112] += 0.5
  want[87:201, 84:175] += 0.5
  gt = annotations.flickr_gt_map(_FLICKR_XML)
  assert gt.dtype == np.float32 and gt.shape == (224, 224)
  np.testing.assert_array_equal(gt, want)
  assert gt[100, 100] == 1.0 and gt[60, 30] == 0.5 and gt[200, 170] == 0.5
  assert gt[0, 0] == 0.0 and gt[139, 111] == 1.0 and gt[140, 111] == 0.5
  assert sorted(np.unique(gt).tolist()) == [0.0, 0.5, 1.0]
  path = tmp_path / "10000.xml"
  path.write_text(_FLICKR_XML)
  np.testing.assert_array_equal(annotations.flickr_gt_map(str(path)), want)
  np.testing.assert_array_equal(annotations.flickr_gt_map(path), want)
  assert annotations.flickr_boxes(_FLICKR_XML) == [[28, 56, 112, 140],
                                          [84, 87, 175, 201]]


def test_flickr_three_overlapping_boxes_clip_at_one():
  xml = "<a>" + "".join(
      f"<o><bbox><s/><x>0</x><y>0</y><x>{v}</x><y>{v}</y></bbox></o>"
      for v in (256, 128, 64)) + "</a>"
  gt = annotations.flickr_gt_map(xml)
  assert gt[0, 0] == 1.0 and gt[100, 100] == 1.0 and gt[200, 200] == 0.5


def test_vggss_boxes_out_of_range_and_inverted():
  boxes = [[-0.1, 0.2, 0.5, 1.3],   # x0 < 0 -> 0; y1 = int(291.2) clips
           [0.9, 0.9, 0.8, 1.0],    # inverted in x: empty
           [0.25, 0.25, 0.5, 0.5]]  # 56..112, inside the first box
  want = np.zeros((224, 224), np.float32)
  want[44:224, 0:112] = 1  # int(224 * 0.2) = 44
  gt = annotations.vggss_gt_map(boxes)
  np.testing.assert_array_equal(gt, want)
  empty = annotations.vggss_gt_map([[0.9, 0.9, 0.8, 1.0], [0.5, 0.6, 0.7, 0.6]])
  assert empty.sum() == 0
  some_pred = _box_map(224, 0, 10, 0, 10)
  assert ev.ciou(some_pred, empty) == 0.0
  assert ev.ciou(np.zeros((224, 224)), empty) == 0.0


def test_box_gt_map():
  want = np.zeros((224, 224), np.float32)
  want[56:140, 56:168] = 1  # 3.5 x [16, 16, 48, 40]
  np.testing.assert_array_equal(
      annotations.box_gt_map([[16, 16, 48, 40]], 224, image_size=64), want)
  want = np.zeros((64, 64), np.float32)
  want[10:20, 5:30] = 1
  want[0:4, 60:64] = 1
  got = annotations.box_gt_map([[5, 10, 30, 20], [60, -3, 70, 4], [9, 9, 8, 12]], 64)
  np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# cIoU and summary
# ---------------------------------------------------------------------------


def test_ciou_hand_values():
  gt = _box_map(8, 0, 4, 0, 4)
  pred = _box_map(8, 2, 6, 0, 4)
  assert ev.ciou(pred, gt) == pytest.approx(8 / 24, abs=1e-15)
  # Consensus gt: 0.5 on rows 0-3, 1.0 on rows 0-1 (cols 0-3).
  gt2 = _box_map(8, 0, 4, 0, 4, 0.5)
  gt2[0:2, 0:4] = 1.0
  # pred rows 1-4: inter = 4*1 + 8*0.5 = 8; sum(gt) = 8 + 4 = 12;
  # pred where gt == 0: row 4 = 4 pixels.
  pred2 = _box_map(8, 1, 5, 0, 4)
  got = ev.ciou(np.stack([pred, pred2]), np.stack([gt, gt2]))
  assert got.dtype == np.float64
  np.testing.assert_allclose(got, [8 / 24, 8 / 16], rtol=0, atol=1e-15)


def _official_ciou(pred, gt):
  """The official cal_CIOU in float64, one map at a time."""
  infer = np.zeros(pred.shape)
  infer[pred >= 0.5] = 1
  gt = gt.astype(np.float64)
  return np.sum(infer * gt) / (np.sum(gt) + np.sum(infer * (gt == 0)))


def test_ciou_matches_official_for_all_gt_kinds():
  rng = np.random.default_rng(9)
  pred = (rng.random((6, 32, 32)) < 0.5).astype(np.float32)
  consensus = (rng.integers(0, 3, (6, 32, 32)) / 2).astype(np.float32)
  binary = (rng.random((6, 32, 32)) < 0.4).astype(np.uint8)
  soft = rng.random((6, 32, 32)) * (rng.random((6, 32, 32)) < 0.5)
  for gt, exact in ((consensus, True), (consensus.astype(np.float64), True),
                    (binary, True), (binary.astype(bool), True),
                    (soft.astype(np.float32), False)):
    got = ev.ciou(pred, gt)
    want = [_official_ciou(pred[i], gt[i]) for i in range(6)]
    if exact:
      np.testing.assert_array_equal(got, want)
    else:
      np.testing.assert_allclose(got, want, rtol=1e-12)
  # gt dtype does not change the scores.
  np.testing.assert_array_equal(ev.ciou(pred, binary),
                                ev.ciou(pred, binary.astype(np.float32)))


def test_summarize_hand_values():
  cious = [0, 0.1, 0.5, 0.5, 0.9, 1.0]
  s = ev.summarize(cious, n_bootstrap=200)
  json.dumps(s)
  assert s["n"] == 6
  assert s["ciou"] == pytest.approx(4 / 6)
  # Thresholds 0.05 * i; counts of cIoU >= t.
  counts = [6, 5, 5] + [4] * 8 + [2] * 8 + [1, 1]
  assert len(counts) == 21
  np.testing.assert_allclose(s["success_curve"], np.array(counts) / 6,
                             atol=1e-15)
  area = 0.0
  for i in range(20):
    area += 0.05 * (counts[i] + counts[i + 1]) / 2 / 6
  assert s["auc"] == pytest.approx(area, abs=1e-12)
  assert s["auc"] == pytest.approx(62.5 * 0.05 / 6, abs=1e-12)
  assert s["thresholds"] == [0.05 * i for i in range(21)]
  s3 = ev.summarize(cious, success_threshold=0.3, n_bootstrap=0)
  assert s3["ciou"] == pytest.approx(4 / 6) and s3["ciou_ci95"] is None


def test_summarize_uses_official_float64_thresholds():
  # 0.05 * 3 = 0.15000000000000002 > 0.15: a cIoU of exactly 3/20 fails the
  # fourth threshold, as in the official code.
  s = ev.summarize([3 / 20], n_bootstrap=0)
  assert s["success_curve"][2] == 1.0 and s["success_curve"][3] == 0.0
  gt = _box_map(20, 0, 1, 0, 20)  # 20 pixels
  pred = _box_map(20, 0, 1, 0, 3)  # 3 of them
  assert ev.ciou(pred, gt) == 3 / 20


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
  rng = np.random.default_rng(6)
  cious = rng.random(249)
  a = ev.summarize(cious, seed=3)
  b = ev.summarize(cious, seed=3)
  c = ev.summarize(cious, seed=4)
  assert a == b
  assert a["ciou_ci95"] != c["ciou_ci95"] or a["auc_ci95"] != c["auc_ci95"]
  lo, hi = a["ciou_ci95"]
  assert lo <= a["ciou"] <= hi and hi - lo > 0.05
  lo, hi = a["auc_ci95"]
  assert lo <= a["auc"] <= hi


# ---------------------------------------------------------------------------
# Pipeline, evaluator
# ---------------------------------------------------------------------------


def test_pointing_hits_against_a_loop_reference():
  """Same size (resize is the identity): the hit is read off the raw map with
  plain loops; first maximum in row-major order on ties."""
  rng = np.random.default_rng(3)
  responses = rng.integers(0, 4, size=(40, 6, 6)).astype(np.float32)  # many ties
  gt = (rng.random((40, 6, 6)) < 0.3).astype(np.float32) * rng.uniform(0.1, 1, (40, 6, 6))
  want = []
  for r, g in zip(responses, gt):
    best, where = -math.inf, None
    for y in range(6):
      for x in range(6):
        if r[y, x] > best:
          best, where = r[y, x], (y, x)
    want.append(1.0 if g[where] > 0 else 0.0)
  got = ev.pointing_hits(responses, gt, block_size=7)  # blocks do not matter
  np.testing.assert_array_equal(got, want)
  assert 0 < got.mean() < 1


def test_pointing_hits_upsampled_peak_stays_in_its_patch():
  """A 4x4 map with one hot patch, resized to 64: the peak lies in that
  patch's 16x16 square, so a box on the square is hit and the other squares
  are not, however peaky or broad the rest of the map."""
  hot = [(0, 0), (1, 2), (3, 3), (2, 1)]
  responses = np.full((4, 4, 4), 0.2, np.float32)
  for i, (y, x) in enumerate(hot):
    responses[i, y, x] = 1.0
  responses[1] += np.linspace(0, 0.5, 16, dtype=np.float32).reshape(4, 4)  # a broad ramp
  responses[1, 1, 2] = 2.0
  on_patch = np.zeros((4, 64, 64), np.float32)
  elsewhere = np.zeros((4, 64, 64), np.float32)
  for i, (y, x) in enumerate(hot):
    on_patch[i, 16 * y:16 * (y + 1), 16 * x:16 * (x + 1)] = 1
    elsewhere[i, 16 * ((y + 2) % 4):16 * ((y + 2) % 4 + 1), :] = 1
  np.testing.assert_array_equal(ev.pointing_hits(responses, on_patch), np.ones(4))
  np.testing.assert_array_equal(ev.pointing_hits(responses, elsewhere), np.zeros(4))
  with pytest.raises(ValueError, match="3 response maps but 4 gt maps"):
    ev.pointing_hits(responses[:3], on_patch)


def test_evaluate_maps_known_cases():
  gt = _box_map(16, 4, 12, 2, 10)
  responses = np.stack([gt, -gt, np.full((16, 16), 0.2, np.float32),
                        np.full((16, 16), -1, np.float32)])
  gts = np.stack([gt] * 4)
  cious, summary = ev.evaluate_maps(responses, gts, n_bootstrap=10)
  # Constant c >= 0: all on -> 64 / 256; constant c < 0: all off -> 0.
  np.testing.assert_allclose(cious, [1.0, 0.0, 64 / 256, 0.0], atol=1e-15)
  assert summary["ciou"] == 0.25 and summary["n"] == 4


def test_evaluate_maps_batch_equals_single_and_uint8_gt():
  rng = np.random.default_rng(7)
  responses = rng.standard_normal((37, 14, 14)).astype(np.float32)
  gts = np.zeros((37, 224, 224), np.uint8)
  for i in range(37):
    x0, y0 = rng.integers(0, 150, 2)
    gts[i, y0:y0 + 60, x0:x0 + 70] = 1
  cious, _ = ev.evaluate_maps(responses, gts, n_bootstrap=0)
  for i in range(0, 37, 6):
    pred = ev.binarize(ev.localization_map(responses[i], 224))
    assert cious[i] == ev.ciou(pred, gts[i].astype(np.float32))
  fixed, _ = ev.evaluate_maps(responses, gts, protocol="fixed",
                              threshold=0.5, n_bootstrap=0)
  assert fixed.shape == (37,)
  for i in range(37):  # each map's own fixed-threshold prediction, one at a time
    pred = ev.binarize(responses[i], protocol="fixed", threshold=0.5, size=224)
    assert fixed[i] == ev.ciou(pred, gts[i].astype(np.float32))
  assert len(set(fixed.tolist())) > 10  # the cases differ: not all 0 or all 1


# ---------------------------------------------------------------------------
# Plots and selection
# ---------------------------------------------------------------------------


def test_select_overlay_samples():
  cious = [0.1, 0.9, 0.5, 0.0, 0.7, 0.3, 0.8]
  sel = plots.select_overlay_samples(cious, 2, seed=0)
  assert sel["best"].tolist() == [1, 6]
  assert sel["worst"].tolist() == [3, 0]
  assert len(sel["random"]) == 2 and set(sel["random"]) <= {2, 4, 5}
  again = plots.select_overlay_samples(cious, 2, seed=0)
  assert sel["random"].tolist() == again["random"].tolist()
  assert sel["indices"].tolist() == [1, 6, 3, 0] + sel["random"].tolist()
  small = plots.select_overlay_samples([0.5, 0.5, 0.5], 2, seed=1)
  assert len(set(small["indices"].tolist())) == 3


def test_plots_write_pngs(tmp_path):
  rng = np.random.default_rng(8)
  s = ev.summarize(rng.random(50), n_bootstrap=10)
  p = plots.plot_success_curve(s, tmp_path / "curve.png", label="model")
  p2 = plots.plot_success_curve([s, s], tmp_path / "curves.png",
                             label=["a", "b"])
  images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
  heat = rng.random((3, 14, 14)).astype(np.float32)
  boxes = [[[8, 8, 40, 30]], None, _box_map(64, 10, 30, 10, 50)]
  p3 = plots.overlay_grid(images, heat, boxes, ["a", "b", "c"],
                       tmp_path / "grid.png", ncols=2)
  for path in (p, p2, p3):
    with Image.open(path) as im:
      im.load()
      assert im.size[0] > 50 and im.size[1] > 50


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
  """No pyplot, no backend switch: a notebook's inline plots keep working."""
  code = ("import sys, numpy as np; from soundloc_jax.evaluation import plots, protocol\n"
          "s = protocol.summarize(np.linspace(0, 1, 9))\n"
          f"plots.plot_success_curve(s, {str(tmp_path / 'c.png')!r})\n"
          "plots.overlay_grid(np.zeros((2, 8, 8, 3), np.uint8), np.ones((2, 4, 4)) / 2, None,"
          f" ['a', 'b'], {str(tmp_path / 'o.png')!r})\n"
          "print('matplotlib.pyplot' in sys.modules)")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)) or ".")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "False"
  assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "o.png").stat().st_size > 500
