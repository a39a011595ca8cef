"""Figures and per-split reports of an evaluation: the success curve, heatmap
overlay grids (with boxes or gt contours), the choice of samples to show, and
`write_report` (metrics.json + figures of one split).

matplotlib is imported lazily, and figures are drawn without pyplot (written
with `savefig`, freed by the garbage collector), so the caller's backend, e.g.
a notebook's inline one, is left alone.
"""

from __future__ import annotations

import json
import os

import numpy as np

from soundloc_jax import input_pipeline
from soundloc_jax.evaluation import annotations
from soundloc_jax.evaluation.protocol import localization_map
from soundloc_jax.evaluation.resize import resize_bilinear

def _figure(**kwargs):
  """A figure that is not registered with pyplot: written with `savefig`,
  freed by the garbage collector, and it leaves the process's matplotlib
  backend alone (a notebook keeps showing its own plots)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(**kwargs)


def plot_success_curve(summary, path, label=None):
  """Writes a PNG of the success curve(s); returns `path`.

  `summary`: a `summarize` dict, or a list of them (then `label` is a list).
  """
  summaries = summary if isinstance(summary, (list, tuple)) else [summary]
  labels = label if isinstance(label, (list, tuple)) else [label] * len(
      summaries)
  fig = _figure(figsize=(4.5, 3.5), dpi=120)
  ax = fig.subplots()
  for s, lab in zip(summaries, labels):
    theta = s.get("success_threshold", 0.5)
    text = f"AUC {s['auc']:.3f}, cIoU@{theta:g} {s['ciou']:.3f}"
    ax.plot(s["thresholds"], s["success_curve"], marker="o", markersize=3,
            label=f"{lab}: {text}" if lab else text)
  ax.set_xlabel("cIoU threshold")
  ax.set_ylabel("success ratio")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="upper right")
  fig.tight_layout()
  fig.savefig(path)
  return path


def _blend(image: np.ndarray, heatmap: np.ndarray, alpha: float, cmap):
  h, w = image.shape[:2]
  hm = np.asarray(heatmap, np.float32)
  if hm.shape != (h, w):
    hm = resize_bilinear(hm, (h, w))
  colour = cmap(np.clip(hm, 0, 1))[..., :3].astype(np.float32) * 255
  out = (1 - alpha) * image.astype(np.float32) + alpha * colour
  return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def overlay_grid(images, heatmaps, boxes_or_gt, titles, path, ncols=4,
                 alpha=0.5):
  """Writes a PNG grid of images with a jet heatmap overlay; returns `path`.

  `images`: uint8 `[N, H, W, 3]`; `heatmaps`: `[N, S, S]` in [0, 1] (resized
  to the image with `resize_bilinear`); `boxes_or_gt`: None, or per sample
  None / pixel boxes `[[x0, y0, x1, y1], ...]` (drawn as rectangles) / a 2-D
  gt map (its 0.5 contour is drawn, resized to the image); `titles`: list of
  str or None.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  from matplotlib import patches  # pylint: disable=g-import-not-at-top
  images = np.asarray(images)
  n = images.shape[0]
  ncols = max(1, min(int(ncols), n))
  nrows = max(1, -(-n // ncols))
  cmap = matplotlib.colormaps["jet"]
  fig = _figure(figsize=(2.4 * ncols, 2.6 * nrows), dpi=100)
  axes = fig.subplots(nrows, ncols, squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for i in range(n):
    ax = axes[i // ncols, i % ncols]
    img = images[i]
    if img.ndim == 2:
      img = np.repeat(img[..., None], 3, axis=-1)
    ax.imshow(_blend(img, heatmaps[i], alpha, cmap))
    extra = None if boxes_or_gt is None else boxes_or_gt[i]
    if extra is not None:
      arr = np.asarray(extra, dtype=np.float64)
      if arr.ndim == 2 and arr.shape[1] != 4:  # a gt map, not [k, 4] boxes
        gt = resize_bilinear(arr.astype(np.float32), img.shape[:2])
        if gt.max() > gt.min():
          ax.contour(gt, levels=[0.5], colors="white", linewidths=1.2)
      else:
        for x0, y0, x1, y1 in arr.reshape(-1, 4):
          ax.add_patch(patches.Rectangle(
              (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
              edgecolor="lime", linewidth=1.5))
    if titles is not None and i < len(titles) and titles[i]:
      ax.set_title(str(titles[i]), fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  return path


def select_overlay_samples(cious, k, seed=0) -> dict[str, np.ndarray]:
  """Indices for a report grid: `{"best", "worst", "random", "indices"}`.

  `best`: the k highest cIoUs (ties: lower index first), `worst`: the k
  lowest among the others, `random`: k drawn without replacement from the rest with
  `np.random.default_rng(seed)` (fewer when the set is small); `indices`
  concatenates best, worst, random.
  """
  c = np.asarray(cious, dtype=np.float64).reshape(-1)
  k = max(int(k), 0)
  best = np.argsort(-c, kind="stable")[:k]
  ascending = np.argsort(c, kind="stable")
  worst = ascending[~np.isin(ascending, best)][:k]
  rest = np.setdiff1d(np.arange(c.size), np.concatenate([best, worst]))
  rng = np.random.default_rng(seed)
  rand = np.sort(rng.choice(rest, size=min(k, rest.size), replace=False))
  return {
      "best": best.astype(np.int64),
      "worst": worst.astype(np.int64),
      "random": rand.astype(np.int64),
      "indices": np.concatenate([best, worst, rand]).astype(np.int64),
  }


def _plain(fields) -> dict:
  """A (nested) ConfigDict as plain dicts, for JSON."""
  return fields.to_dict() if hasattr(fields, "to_dict") else dict(fields)


def write_report(result, out_dir: str, source, config, num_samples: int = 4,
                 seed: int = 0, extra: dict | None = None) -> None:
  """An `evaluators.EvalResult`'s report in `out_dir`: `metrics.json` (the
  metrics, the protocol, the success curve, per-sample cIoU and / or retrieval
  rank with ids; `extra` fields first, e.g. the checkpoint step),
  `success_curve.png` and an overlay grid of the best, worst and random
  samples (retrieval only: the best and worst ranked sounds)."""
  os.makedirs(out_dir, exist_ok=True)
  per_sample = [{"id": i} for i in result.ids]
  for row, c in zip(per_sample, result.cious):
    if result.localized:
      row["ciou"] = float(c)
  for row, r in zip(per_sample, result.ranks if result.ranks is not None else ()):
    row["retrieval_rank"] = int(r)
  record = {**(extra or {}), "split": result.split, "protocol": _plain(config.eval),
            **result.metrics,
            "success_curve": result.summary.get("success_curve"),
            "thresholds": result.summary.get("thresholds"), "per_sample": per_sample}
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(record, f, indent=1)
  if not result.localized:
    order = np.argsort(result.ranks, kind="stable")
    k = min(num_samples, len(order))
    save_overlays(result, np.concatenate([order[:k], order[::-1][:k]]), source, config,
                  os.path.join(out_dir, "overlays.png"), tags=["best"] * k + ["worst"] * k)
    return
  plot_success_curve(result.summary, os.path.join(out_dir, "success_curve.png"),
                     label=result.split)
  picks = select_overlay_samples(result.cious, num_samples, seed)
  tags = [tag for tag in ("best", "worst", "random") for _ in picks[tag]]
  save_overlays(result, picks["indices"], source, config, os.path.join(out_dir, "overlays.png"),
                tags=tags)


def save_overlays(result, indices, source, config, path: str, tags=None) -> None:
  """An overlay grid of samples `indices` of `result`'s split: the model input,
  its protocol heatmap, the ground truth (box or gt contour) when annotated,
  titled with the id and the sample's cIoU (or retrieval rank)."""
  indices = [int(i) for i in indices]
  size = config.dataset.image_size
  images, boxes = [], []
  for i in indices:
    ex = input_pipeline.preprocess(source[i], image_size=size, augment=False,
                                   rng=np.random.default_rng(0), index=i,
                                   gt_format=annotations.gt_format_of(source), gt_size=size)
    images.append(ex["image"])
    boxes.append([ex["box"].tolist()] if "box" in ex else ex.get("gt_map"))
  heat = localization_map(result.responses[indices], size=size)
  tags = tags or [""] * len(indices)
  titles = [f"{t} {result.ids[i]}\n" + (f"cIoU {result.cious[i]:.2f}" if result.localized
                                         else f"rank {int(result.ranks[i]) + 1}")
            for t, i in zip(tags, indices)]
  titles = [t.strip() for t in titles]
  overlay_grid(np.stack(images), heat, boxes, titles, path)
