"""Evaluators: run a model over an annotated split and score its heatmaps.

Interface (what the trainer and `--mode=eval` use):
  `SplitEvaluator(name, source, config)` wraps one split;
  `evaluator.run(predict_fn)` calls `predict_fn(image, spectrogram) -> response`
  (`[B, h, w]` raw maps, one device batch at a time), scores every sample with
  the official protocol (`soundloc_jax.evaluation`) and returns an
  `EvalResult`: `metrics` (a flat dict of floats, e.g. `ciou`, `auc`,
  `ciou_median`, plus bootstrap intervals), and the per-sample arrays
  (`ids`, `cious`, `responses`) for reports and overlays. `result.items()`
  yields `(name, value)` pairs, big_vision style, for logging.

The headline protocol comes from `config.eval` (`protocol`, `threshold`,
`order`, `size`); the LVS "median" protocol is always reported as well, as
`*_median`, so numbers stay comparable with the papers.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from soundloc_jax import evaluation, input_pipeline
from soundloc_jax.errors import DatasetError


@dataclasses.dataclass
class EvalResult:
  split: str
  metrics: dict
  ids: list
  cious: np.ndarray
  responses: np.ndarray
  gt_maps: np.ndarray
  summary: dict

  def items(self):
    return self.metrics.items()


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
  return np.stack([evaluation.box_gt_map([box], size=size, image_size=image_size)
                   for box in batch["box"]])


def gt_format_of(source) -> str:
  """The `gt_format` a data source's dataset metadata declares ('' if none)."""
  info = getattr(source, "dataset_info", None)
  metadata = getattr(info, "metadata", None) or {}
  return str(metadata.get("gt_format", "") or "")


class SplitEvaluator:

  def __init__(self, name: str, source, config):
    self.name = name
    self.source = source
    self.config = config

  def run(self, predict_fn) -> EvalResult:
    ev, ds = self.config.eval, self.config.dataset
    responses, gts, ids = [], [], []
    for batch in input_pipeline.eval_batches(self.source, batch_size=ev.batch_size,
                                             image_size=ds.image_size,
                                             num_threads=ds.num_workers,
                                             gt_format=gt_format_of(self.source),
                                             gt_size=ev.size, eval_audio=ev.get("audio", "")):
      valid = batch["valid"]
      response = np.asarray(predict_fn(batch["image"], batch["spectrogram"]), np.float32)
      responses.append(response[valid])
      gts.append(gt_maps_from_batch(batch, ev.size, ds.image_size)[valid])
      ids.extend(i.decode() if isinstance(i, bytes) else str(i) for i in batch["id"][valid])
    responses = np.concatenate(responses)
    gt_maps = np.concatenate(gts)
    cious, summary = evaluation.evaluate_maps(
        responses, gt_maps, protocol=ev.protocol, size=ev.size, threshold=ev.threshold,
        order=ev.order, success_threshold=ev.success_threshold)
    _, median = evaluation.evaluate_maps(responses, gt_maps, protocol="median", size=ev.size,
                                         success_threshold=ev.success_threshold)
    metrics = {"ciou": summary["ciou"], "auc": summary["auc"],
               "ciou_ci95_lo": summary["ciou_ci95"][0], "ciou_ci95_hi": summary["ciou_ci95"][1],
               "ciou_median": median["ciou"], "auc_median": median["auc"], "n": len(ids)}
    return EvalResult(self.name, metrics, ids, np.asarray(cious), responses, gt_maps, summary)


def heatmaps_for_display(responses: np.ndarray, size: int) -> np.ndarray:
  """Min-max normalised maps at `size`, the way the protocol sees them."""
  return evaluation.localization_map(responses, size=size)


def write_report(result: EvalResult, out_dir: str, source, config, num_samples: int = 4,
                 seed: int = 0) -> None:
  """`metrics.json` (summary + per-sample cIoU with ids), `success_curve.png` and an
  overlay grid of the best, worst and random samples."""
  os.makedirs(out_dir, exist_ok=True)
  record = {"split": result.split, "protocol": dict(config.eval), **result.metrics,
            "success_curve": result.summary["success_curve"],
            "thresholds": result.summary["thresholds"],
            "per_sample": [{"id": i, "ciou": float(c)} for i, c in zip(result.ids, result.cious)]}
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(record, f, indent=1)
  evaluation.plot_success_curve(result.summary, os.path.join(out_dir, "success_curve.png"),
                                label=result.split)
  picks = evaluation.select_overlay_samples(result.cious, num_samples, seed)
  tags = [tag for tag in ("best", "worst", "random") for _ in picks[tag]]
  save_overlays(result, picks["indices"], source, config, os.path.join(out_dir, "overlays.png"),
                tags=tags)


def save_overlays(result: EvalResult, indices, source, config, path: str, tags=None) -> None:
  indices = [int(i) for i in indices]
  size = config.dataset.image_size
  images, boxes = [], []
  for i in indices:
    ex = input_pipeline.preprocess(source[i], image_size=size, augment=False,
                                   rng=np.random.default_rng(0), index=i,
                                   gt_format=gt_format_of(source), gt_size=size)
    images.append(ex["image"])
    boxes.append([ex["box"].tolist()] if "box" in ex else ex.get("gt_map"))
  heat = heatmaps_for_display(result.responses[indices], size)
  tags = tags or [""] * len(indices)
  titles = [f"{t} {result.ids[i]}\ncIoU {result.cious[i]:.2f}".strip()
            for t, i in zip(tags, indices)]
  evaluation.overlay_grid(np.stack(images), heat, boxes, titles, path)
