"""Evaluators: run a model over a split and score its heatmaps (or, for a split
without annotations, its audio -> image retrieval).

Interface (what the trainer and `--mode=eval` use):
  `SplitEvaluator(name, source, config)` wraps one split;
  `evaluator.run(predict_fn)` calls `predict_fn(image, spectrogram) -> response`
  (`[B, h, w]` raw maps, one device batch at a time), scores every sample with
  the official protocol (`soundloc_jax.evaluation`) and returns an
  `EvalResult`: `metrics` (a flat dict of floats, e.g. `ciou`, `auc`,
  `ciou_median`, plus bootstrap intervals, and `pointing`, the pointing-game
  hit rate of `evaluation.pointing_hits`), and the per-sample arrays
  (`ids`, `cious`, `responses`) for reports and overlays. `result.items()`
  yields `(name, value)` pairs, big_vision style, for logging.

The headline protocol comes from `config.eval` (`protocol`, `threshold`,
`order`, `size`); the LVS "median" protocol is always reported as well, as
`*_median`, so numbers stay comparable with the papers.

Splits without `box` / `gt_map` (real data has no annotated validation
split) are scored by held-out retrieval instead: `r1` / `r5`, how often a
sound's own image is the top-1 / in the top-5 of the split's images ranked by
the peak of their response map; `run(..., retrieval=True)` adds these to an
annotated split's metrics too (the trainer's validation split does).
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
  gt_maps: np.ndarray | None       # None: the split has no annotations
  summary: dict
  ranks: np.ndarray | None = None  # retrieval rank of each sound's own image

  def items(self):
    return self.metrics.items()

  @property
  def localized(self) -> bool:
    return self.gt_maps is not None

  def describe(self, success_threshold: float = 0.5) -> str:
    """One line: cIoU / AUC (both protocols) and / or retrieval R@1 / R@5."""
    m, parts = self.metrics, []
    if self.localized:
      parts.append(f"cIoU@{success_threshold:g} {m['ciou']:.3f} [{m['ciou_ci95_lo']:.3f}, "
                   f"{m['ciou_ci95_hi']:.3f}] AUC {m['auc']:.3f} | median protocol cIoU {m['ciou_median']:.3f} "
                   f"AUC {m['auc_median']:.3f} | pointing {m['pointing']:.3f}")
    if self.ranks is not None:
      parts.append(f"retrieval R@1 {m['r1']:.3f} R@5 {m['r5']:.3f} (chance {m['r1_chance']:.3f}"
                   f" / {m['r5_chance']:.3f})")
    return " | ".join(parts) + f" (n={m['n']})"


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


def has_annotations(batch: dict) -> bool:
  """Whether a batch carries localization ground truth (`gt_map` or `box`)."""
  return "gt_map" in batch or "box" in batch


def source_is_annotated(source) -> bool:
  """Whether a split's examples carry localization ground truth (its first one
  has `box`, or `gt_boxes` with a `gt_format` in the dataset metadata)."""
  if len(source) == 0:
    return False
  example = source[0]
  return "box" in example or ("gt_boxes" in example and bool(gt_format_of(source)))


def retrieval_scores(visual: np.ndarray, audio: np.ndarray,
                     block_bytes: int = 1 << 28) -> np.ndarray:
  """`[Na, Nv]`: how strongly sound `a` is found in image `v`, the MAX over
  `v`'s patches of their cosine similarity with `a` (the peak of the response
  map `R = V a`). Max, not mean: a source covers a few patches, and the mean
  would dilute it with the rest of the scene (which the losses push away from
  the sound), so images with a small source would lose to any loosely related
  scene. Blocked over sounds to bound memory (`block_bytes`)."""
  n, h, w, d = visual.shape
  flat = np.asarray(visual, np.float32).reshape(n * h * w, d)
  rows = max(1, block_bytes // (4 * n * h * w))
  out = np.empty((audio.shape[0], n), np.float32)
  for start in range(0, audio.shape[0], rows):
    block = np.asarray(audio[start:start + rows], np.float32) @ flat.T
    out[start:start + rows] = block.reshape(-1, n, h * w).max(axis=-1)
  return out


def retrieval_ranks(scores: np.ndarray) -> np.ndarray:
  """0-based rank of each sound's own image (the diagonal) among all images:
  how many images score strictly higher."""
  own = np.diag(scores)
  return (scores > own[:, None]).sum(axis=1)


def retrieval_metrics(ranks: np.ndarray) -> dict:
  """`r1`, `r5` (top-1 / top-5 accuracy of the true image), the median rank,
  and chance levels for `n` candidates."""
  n = len(ranks)
  return {"r1": float(np.mean(ranks < 1)), "r5": float(np.mean(ranks < 5)),
          "median_rank": float(np.median(ranks)) + 1.0, "r1_chance": 1.0 / n,
          "r5_chance": min(5, n) / n, "n": n}


class SplitEvaluator:
  """Scores a split: localization (cIoU, AUC) when it is annotated, held-out
  audio -> image retrieval (`r1`, `r5` among the split's own images) when it
  is not, or also when `retrieval=True` (the trainer's validation split, so
  `checkpoint.best_metric="val_r1"` works with and without annotations).
  Retrieval needs `predict_fn` to return the model's output dict
  (`visual_features`, `audio_embedding`, `response`); an array is taken as the
  response alone."""

  def __init__(self, name: str, source, config):
    self.name = name
    self.source = source
    self.config = config

  def run(self, predict_fn, retrieval: bool = False) -> EvalResult:
    ev, ds = self.config.eval, self.config.dataset
    responses, gts, ids, visual, audio = [], [], [], [], []
    annotated = None
    for batch in input_pipeline.eval_batches(self.source, batch_size=ev.batch_size,
                                             image_size=ds.image_size,
                                             num_threads=ds.num_workers,
                                             gt_format=gt_format_of(self.source),
                                             gt_size=ev.size, eval_audio=ev.get("audio", "")):
      valid = batch["valid"]
      out = predict_fn(batch["image"], batch["spectrogram"])
      if annotated is None:
        annotated = has_annotations(batch)
        retrieval = retrieval or not annotated
        if retrieval and not isinstance(out, dict):
          raise DatasetError(f"split {self.name!r} has no localization annotations ('box' or "
                             "'gt_boxes' with a gt_format); scoring it by retrieval needs the "
                             "model's features (a predict_fn returning the output dict)")
      outputs = out if isinstance(out, dict) else {"response": out}
      responses.append(np.asarray(outputs["response"], np.float32)[valid])
      if retrieval:
        visual.append(np.asarray(outputs["visual_features"], np.float32)[valid])
        audio.append(np.asarray(outputs["audio_embedding"], np.float32)[valid])
      if annotated:
        gts.append(gt_maps_from_batch(batch, ev.size, ds.image_size)[valid])
      ids.extend(i.decode() if isinstance(i, bytes) else str(i) for i in batch["id"][valid])
    responses = np.concatenate(responses)
    metrics, summary, ranks = {}, {}, None
    if retrieval:
      ranks = retrieval_ranks(retrieval_scores(np.concatenate(visual), np.concatenate(audio)))
      metrics.update(retrieval_metrics(ranks))
    if not annotated:
      nan = np.full(len(ids), np.nan, np.float32)
      return EvalResult(self.name, metrics, ids, nan, responses, None, summary, ranks)
    gt_maps = np.concatenate(gts)
    cious, summary = evaluation.evaluate_maps(
        responses, gt_maps, protocol=ev.protocol, size=ev.size, threshold=ev.threshold,
        order=ev.order, success_threshold=ev.success_threshold)
    _, median = evaluation.evaluate_maps(responses, gt_maps, protocol="median", size=ev.size,
                                         success_threshold=ev.success_threshold)
    metrics.update({"ciou": summary["ciou"], "auc": summary["auc"],
                    "ciou_ci95_lo": summary["ciou_ci95"][0],
                    "ciou_ci95_hi": summary["ciou_ci95"][1],
                    "ciou_median": median["ciou"], "auc_median": median["auc"],
                    "pointing": float(np.mean(evaluation.pointing_hits(responses, gt_maps,
                                                                       size=ev.size))),
                    "n": len(ids)})
    return EvalResult(self.name, metrics, ids, np.asarray(cious), responses, gt_maps, summary,
                      ranks)


def heatmaps_for_display(responses: np.ndarray, size: int) -> np.ndarray:
  """Min-max normalised maps at `size`, the way the protocol sees them."""
  return evaluation.localization_map(responses, size=size)


def write_report(result: EvalResult, out_dir: str, source, config, num_samples: int = 4,
                 seed: int = 0) -> None:
  """`metrics.json` (summary + per-sample cIoU with ids), `success_curve.png` and an
  overlay grid of the best, worst and random samples."""
  os.makedirs(out_dir, exist_ok=True)
  per_sample = [{"id": i} for i in result.ids]
  for row, c in zip(per_sample, result.cious):
    if result.localized:
      row["ciou"] = float(c)
  for row, r in zip(per_sample, result.ranks if result.ranks is not None else ()):
    row["retrieval_rank"] = int(r)
  record = {"split": result.split, "protocol": dict(config.eval), **result.metrics,
            "success_curve": result.summary.get("success_curve"),
            "thresholds": result.summary.get("thresholds"), "per_sample": per_sample}
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(record, f, indent=1)
  if not result.localized:  # retrieval only: overlays of the best / worst ranked sounds
    order = np.argsort(result.ranks, kind="stable")
    k = min(num_samples, len(order))
    save_overlays(result, np.concatenate([order[:k], order[::-1][:k]]), source, config,
                  os.path.join(out_dir, "overlays.png"), tags=["best"] * k + ["worst"] * k)
    return
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
  titles = [f"{t} {result.ids[i]}\n" + (f"cIoU {result.cious[i]:.2f}" if result.localized
                                         else f"rank {int(result.ranks[i]) + 1}")
            for t, i in zip(tags, indices)]
  titles = [t.strip() for t in titles]
  evaluation.overlay_grid(np.stack(images), heat, boxes, titles, path)
