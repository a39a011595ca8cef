"""Training curves of runs side by side: the train loss and the validation
retrieval (R@1, median rank) per step, read from each workdir's metrics.jsonl.

  python scripts/plot_curves.py --out=docs/figures/imagenet_recipe.png \\
      "fine-tuned=RUNS/lvs_finetune" "frozen=RUNS/lvs_frozen"

Each positional argument is `LABEL=WORKDIR`. The loss is the logged train
loss (one point per `log_every_steps`); the retrieval points are the
validation rows (one per epoch end). A workdir without metrics.jsonl, or
without rows of a kind, is named in one line and the script exits with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

PANELS = (("train", "loss", "train loss"), ("validation", "r1", "validation R@1 (audio -> image)"),
          ("validation", "median_rank", "validation median rank (lower is better)"))


def read_rows(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise SystemExit(f"error: {path} does not exist (not a training workdir?)")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def series(rows: list[dict], split: str, key: str) -> tuple[list, list]:
  """`(steps, values)` of `key` in the rows of `split`, the last value per step."""
  by_step = {r["step"]: r[key] for r in rows if r.get("split") == split and key in r}
  steps = sorted(by_step)
  return steps, [by_step[s] for s in steps]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("runs", nargs="+", help="LABEL=WORKDIR")
  p.add_argument("--out", required=True, help="PNG to write")
  p.add_argument("--title", default="")
  args = p.parse_args(argv)
  runs = []
  for spec in args.runs:
    label, sep, workdir = spec.partition("=")
    if not sep:
      print(f"error: {spec!r} is not LABEL=WORKDIR", file=sys.stderr)
      return 2
    try:
      runs.append((label, read_rows(workdir)))
    except SystemExit as e:
      print(e, file=sys.stderr)
      return 2
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
  for ax, (split, key, name) in zip(axes, PANELS):
    for label, rows in runs:
      steps, values = series(rows, split, key)
      if steps:
        ax.plot(steps, values, marker="o" if split == "validation" else None, ms=3, label=label)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  if args.title:
    fig.suptitle(args.title, fontsize=11)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  fig.savefig(args.out, dpi=110)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
