"""Localization ground truth: the official rules that turn a dataset's box
annotations into `[S, S]` maps, and how a split says it has them.

Four rules (the dataset metadata's `gt_format` names one, `GT_FORMATS`):
  "flickr256"  Flickr-SoundNet: annotator boxes in 256-pixel coordinates,
               the consensus map `flickr_gt_map` (values 0 / 0.5 / 1)
  "unit"       VGG-SS: normalised boxes, the binary map `vggss_gt_map`
  "pixels"     half-open pixel boxes of the stored 224 test view, `box_gt_map`
  "pixels:S"   the same in pixels of a stored S x S image (e.g. "pixels:96":
               the `stamps` benchmark stores its images at the model's size)
The demo dataset stores one pixel `box` per example instead (its image's
pixels, `box_gt_map`). `gt_map_from_boxes` applies a rule to the raw numbers
an example stores (`gt_boxes`); `gt_maps_from_batch` gives a batch's maps
either way; `source_is_annotated` / `has_annotations` say whether a split /
batch has ground truth at all (real validation splits do not).

Interpretations chosen where the official code leaves room:
* Flickr XML: coordinates are read with `int(text)` as the official code;
  text that is not an integer literal (not in the public release, where the
  official code would raise) is read as `int(float(text))`, i.e. truncated
  toward zero before the `int(size * v / 256)` scaling. Only `<bbox>`
  children are used (the official code crashes on any other child of a
  root child). Negative coordinates keep Python slice semantics as there.
* `box_gt_map` with `image_size`: box edges are scaled by `size /
  image_size` and rounded to the nearest pixel edge (`floor(v * s + 0.5)`),
  then clipped to [0, size].
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET

import numpy as np

from soundloc_jax.errors import DatasetError
from soundloc_jax.evaluation.protocol import DEFAULT_SIZE
from soundloc_jax.evaluation.resize import size_hw

GT_FORMATS = ("flickr256", "unit", "pixels", "pixels:S")
# Silent objects per example the input pipeline pads to (`silent_maps_from_boxes`).
MAX_SILENT_OBJECTS = 4


def pixel_frame(gt_format: str) -> int | None:
  """The image size S whose pixels a `"pixels"` (224) or `"pixels:S"` format
  counts boxes in; None for the other formats."""
  if gt_format == "pixels":
    return 224
  head, _, size = gt_format.partition(":")
  if head == "pixels" and size.isdigit() and int(size) > 0:
    return int(size)
  return None

def _xml_root(xml_path_or_text):
  if isinstance(xml_path_or_text, bytes):
    xml_path_or_text = xml_path_or_text.decode("utf-8")
  if isinstance(xml_path_or_text, str) and xml_path_or_text.lstrip(
      ).startswith("<"):
    return ET.fromstring(xml_path_or_text)
  return ET.parse(os.fspath(xml_path_or_text)).getroot()


def _official_int(text: str) -> int:
  try:
    return int(text)
  except (TypeError, ValueError):
    return int(float(text))


def flickr_boxes(xml_path_or_text, size=DEFAULT_SIZE) -> list[list[int]]:
  """Annotator boxes `[xmin, ymin, xmax, ymax]` scaled to `size`.

  For each child of the root, each `<bbox>` under it: skip its first child,
  read the next four as xmin, ymin, xmax, ymax (256-pixel coordinates),
  each becoming `int(size * v / 256)` with `v = int(text)`.
  """
  root = _xml_root(xml_path_or_text)
  boxes = []
  for child in root:
    for node in child:
      if node.tag != "bbox":
        continue
      values = list(node)[1:5]
      if len(values) < 4:
        raise ValueError(f"<bbox> with {len(values)} coordinates, expected 4")
      boxes.append([int(size * _official_int(v.text) / 256) for v in values])
  return boxes


def flickr_gt_map(xml_path_or_text, size=DEFAULT_SIZE) -> np.ndarray:
  """Flickr-SoundNet consensus map `[size, size]` float32, values 0/0.5/1.

  Each annotator box adds 1 on `[ymin:ymax, xmin:xmax]` (Python slicing);
  the sum is halved and clipped at 1. Accepts a file path or the XML text.
  """
  return _consensus_map(flickr_boxes(xml_path_or_text, size), size)


def _consensus_map(boxes, size) -> np.ndarray:
  """+1 per annotator box on `[y0:y1, x0:x1]` (integer pixel boxes), halved,
  clipped at 1 (integers and halves are exact in float32)."""
  gt = np.zeros((size, size), np.float32)
  for x0, y0, x1, y1 in boxes:
    gt[y0:y1, x0:x1] += 1
  gt /= 2
  np.minimum(gt, 1, out=gt)
  return gt


def vggss_gt_map(boxes, size=DEFAULT_SIZE) -> np.ndarray:
  """VGG-SS binary map `[size, size]` float32 from normalised boxes.

  Each coordinate becomes `int(size * max(v, 0))`; boxes `[x0, y0, x1, y1]`
  are OR-ed on `[y0:y1, x0:x1]` (inverted boxes are empty, values past
  `size` clip as slices do).
  """
  gt = np.zeros((size, size), np.float32)
  for box in boxes:
    x0, y0, x1, y1 = [int(size * max(float(v), 0)) for v in box[:4]]
    gt[y0:y1, x0:x1] = 1
  return gt


def box_gt_map(boxes_px, size, image_size=None) -> np.ndarray:
  """Binary map `[size, size]` float32 from half-open pixel boxes.

  `boxes_px`: `[[x0, y0, x1, y1], ...]` in pixels of an `image_size` image
  (int or (H, W); defaults to `size`). Edges are scaled by `size /
  image_size`, rounded to the nearest pixel edge and clipped to the map;
  boxes are OR-ed, inverted boxes are empty.
  """
  out_h, out_w = size_hw(size)
  img_h, img_w = (out_h, out_w) if image_size is None else size_hw(
      image_size)
  sy, sx = out_h / img_h, out_w / img_w
  gt = np.zeros((out_h, out_w), np.float32)
  boxes = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
  for x0, y0, x1, y1 in boxes:
    cx0, cx1 = (min(max(math.floor(v * sx + 0.5), 0), out_w) for v in (x0, x1))
    cy0, cy1 = (min(max(math.floor(v * sy + 0.5), 0), out_h) for v in (y0, y1))
    gt[cy0:cy1, cx0:cx1] = 1
  return gt


def gt_map_from_boxes(boxes, gt_format: str, size: int) -> np.ndarray:
  """float32 `[size, size]` ground-truth map of raw `gt_boxes` `[N, 4]`, by the
  official rule of `gt_format` (module docstring)."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  if gt_format == "unit":
    return vggss_gt_map(boxes, size=size)
  frame = pixel_frame(gt_format)
  if frame is not None:
    return box_gt_map(boxes, size=size, image_size=frame)
  if gt_format == "flickr256":
    # `flickr_gt_map` on the XML's numbers: each box int(size * v / 256).
    return _consensus_map((boxes.astype(np.float64) * size / 256).astype(np.int64), size)
  raise DatasetError(f"unknown gt_format {gt_format!r} in the dataset metadata; "
                     f"expected one of {GT_FORMATS}")


def silent_maps_from_boxes(boxes, gt_format: str, size: int) -> tuple[np.ndarray, np.ndarray]:
  """One map per silent object's box (`silent_boxes` `[k, 4]`, the rule of
  `gt_format`), padded: `(maps [K, size, size] float32, valid [K] bool)`
  with K = MAX_SILENT_OBJECTS (for the silent-object test, `objects.py`)."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  if len(boxes) > MAX_SILENT_OBJECTS:
    raise DatasetError(f"an example has {len(boxes)} silent boxes, more than "
                       f"{MAX_SILENT_OBJECTS}")
  maps = np.zeros((MAX_SILENT_OBJECTS, size, size), np.float32)
  for k, box in enumerate(boxes):
    maps[k] = gt_map_from_boxes(box[None], gt_format, size)
  return maps, np.arange(MAX_SILENT_OBJECTS) < len(boxes)


def gt_maps_from_batch(batch: dict, size: int, image_size: int) -> np.ndarray:
  """`[B, size, size]` ground truth: the pipeline's `gt_map` (real test splits,
  official rule of the dataset's `gt_format`), else the demo's `box`."""
  if "gt_map" in batch:
    gt = np.asarray(batch["gt_map"], np.float32)
    if gt.shape[1:] != (size, size):
      raise DatasetError(f"gt_map of shape {gt.shape[1:]} does not match eval.size {size}")
    return gt
  if "box" not in batch:
    raise DatasetError("this split has no box annotations ('box' or 'gt_boxes' with a "
                       "gt_format in the dataset metadata); it cannot be used for "
                       "localization evaluation")
  return np.stack([box_gt_map([box], size=size, image_size=image_size)
                   for box in batch["box"]])


def gt_format_of(source) -> str:
  """The `gt_format` a data source's dataset metadata declares ('' if none)."""
  info = getattr(source, "dataset_info", None)
  metadata = getattr(info, "metadata", None) or {}
  return str(metadata.get("gt_format", "") or "")


def has_annotations(batch: dict) -> bool:
  """Whether a batch carries localization ground truth (`gt_map` or `box`)."""
  return "gt_map" in batch or "box" in batch


def offscreen_splits(source) -> tuple:
  """The splits the dataset metadata lists as `offscreen_splits`: annotated
  splits in which an example may hold no box, its sound's source not being in
  the frame (the extended protocol's negatives; `evaluation.extended`)."""
  info = getattr(source, "dataset_info", None)
  metadata = getattr(info, "metadata", None) or {}
  return tuple(str(s) for s in (metadata.get("offscreen_splits", ()) or ()))


def source_is_annotated(source) -> bool:
  """Whether a split's examples carry localization ground truth (its first one
  has `box`, or at least one `gt_boxes` row with a `gt_format` in the dataset
  metadata: real validation splits store an empty `[0, 4]`; or the metadata
  lists the split in `offscreen_splits`, where an empty `[0, 4]` is a pair
  whose source is off-screen)."""
  if len(source) == 0:
    return False
  if gt_format_of(source) and str(getattr(source, "split", "")) in offscreen_splits(source):
    return True
  example = source[0]
  return "box" in example or (np.size(example.get("gt_boxes", ())) > 0
                              and bool(gt_format_of(source)))
