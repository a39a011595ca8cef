"""scripts/map_peaks.py: the outer ring of a map's cells and the cell of a
box's centre of mass, against boxes drawn by the protocol's own helper."""
import os
import sys

import numpy as np

from soundloc_jax.evaluation import annotations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
try:
  import map_peaks
finally:
  sys.path.pop(0)


def test_ring_holds_exactly_the_border_cells():
  ring = map_peaks.ring_mask(6, 6)
  assert ring.sum() == 20 and not ring[1:-1, 1:-1].any() and ring[0].all() and ring[:, -1].all()


def test_box_cells_are_the_cells_of_each_boxs_centre():
  """Boxes on a 224 grid scored on a 6 x 6 map: a loop over boxes, from the
  box coordinates themselves, gives the same cells."""
  rng = np.random.default_rng(0)
  boxes, maps = [], []
  for _ in range(30):
    x0, y0 = rng.integers(0, 200, 2)
    box = [x0, y0, x0 + rng.integers(4, 24), y0 + rng.integers(4, 24)]
    boxes.append(box)
    maps.append(annotations.box_gt_map([box], size=224))
  got = map_peaks.box_cells(np.stack(maps), 6, 6)
  for (x0, y0, x1, y1), (row, col) in zip(boxes, got):
    ys, xs = np.nonzero(annotations.box_gt_map([[x0, y0, x1, y1]], size=224))
    assert (row, col) == (int(ys.mean() * 6 // 224), int(xs.mean() * 6 // 224))
