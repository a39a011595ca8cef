"""Oracle, chance and centre-guess numbers of every metric on the stamps
benchmark's annotated test splits (data_builders/stamps/README.md).

  python scripts/stamps_baselines.py --data_dir=D [--config=default] [--draws=20]

Maps scored (no model involved):
  oracle         1 in the sounding object's box, at the evaluation size;
  oracle cells   the sounding box's coverage of each stride-16 feature cell
                 (S/16 x S/16, e.g. 6 x 6 at 96 px): the best a stride-16 map can
                 draw; the protocols upsample it like a model's;
  random         uniform noise at the feature resolution (chance): the mean
                 over `--draws` draws, the interval the 2.5 / 97.5 percentiles
                 of the split-level number over draws;
  centre         a Gaussian bump at the image centre, sigma = a quarter of the side.
Metrics (the project's `soundloc_jax.evaluation`, gt maps through
`annotations.gt_map_from_boxes` as the evaluator builds them, at 224):
pointing game (`pointing_hits`), the silent-object test
(`silent_object_scores`: the sounding box's mean heat above each silent
box's, ties 1/2), cIoU@0.5 and AUC under the fixed threshold 0.5
(`protocol="fixed"`) and the LVS median rule (`protocol="median"`). For the
deterministic maps the intervals are 95% percentile bootstraps over images
(1000 resamples, seed 0). Under the median rule a map without ties switches
on half the pixels, so a box covering a fraction f of the image caps cIoU
at min(1, 2 f); each split's line gives the mean box fraction, that
ceiling and the share of images where cIoU@0.5 is reachable at all (2 f >=
0.5). Maps that are flat outside the box (the oracles) tie at their minimum
and are not capped. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from soundloc_jax.evaluation import annotations, baselines, objects, protocol  # noqa: E402

EVAL_SIZE = 224
STRIDE = 16
SPLITS = ("test", "test_unseen")


def load_split(name: str, split: str, data_dir: str):
  """(sounding gt maps [N, E, E], silent gt maps: N arrays [k, E, E], image size S)."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(name, data_dir=data_dir)
  fmt, size = builder.info.metadata["gt_format"], int(builder.info.metadata["image_size"])
  source = tfds.data_source(name, split=split, data_dir=data_dir)
  sounding, silent = [], []
  for i in range(len(source)):
    ex = source[i]
    sounding.append(annotations.gt_map_from_boxes(ex["gt_boxes"], fmt, EVAL_SIZE))
    silent.append(np.stack([annotations.gt_map_from_boxes(b[None], fmt, EVAL_SIZE)
                            for b in np.asarray(ex["silent_boxes"]).reshape(-1, 4)]))
  return np.stack(sounding), silent, size, fmt, source


def oracle_cells(source, fmt: str, size: int) -> np.ndarray:
  """Each sounding box's coverage of the S/16 x S/16 feature cells."""
  cells = size // STRIDE
  out = []
  for i in range(len(source)):
    full = annotations.gt_map_from_boxes(source[i]["gt_boxes"], fmt, size)[:cells * STRIDE,
                                                                              :cells * STRIDE]
    out.append(full.reshape(cells, STRIDE, cells, STRIDE).mean(axis=(1, 3)))
  return np.stack(out).astype(np.float32)


def centre_map(n: int) -> np.ndarray:
  return baselines.centre_prior(n, EVAL_SIZE)


def _boot(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float]:
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(values), (n_boot, len(values)))
  return [float(v) for v in np.percentile(values[idx].mean(axis=1), [2.5, 97.5])]


def score(responses, sounding, silent) -> dict:
  """Every metric of one set of maps: `{metric: (value, [lo, hi])}`."""
  out = {}
  hits = protocol.pointing_hits(responses, sounding, size=EVAL_SIZE)
  out["pointing"] = (float(hits.mean()), _boot(hits))
  wins = objects.silent_object_scores(responses, sounding, silent, size=EVAL_SIZE)
  out["silent"] = (float(wins.mean()), _boot(wins))
  for protocol in ("fixed", "median"):
    _, s = protocol.evaluate_maps(responses, sounding, protocol=protocol, size=EVAL_SIZE,
                                    threshold=0.5)
    out[f"ciou_{protocol}"] = (s["ciou"], s["ciou_ci95"])
    out[f"auc_{protocol}"] = (s["auc"], s["auc_ci95"])
  return out


def score_draws(draws: list[dict]) -> dict:
  return {k: (float(np.mean([d[k][0] for d in draws])),
              [float(v) for v in np.percentile([d[k][0] for d in draws], [2.5, 97.5])])
          for k in draws[0]}


COLUMNS = (("pointing", "pointing"), ("silent", "silent-object test"),
           ("ciou_fixed", "cIoU@0.5 fixed 0.5"), ("auc_fixed", "AUC fixed"),
           ("ciou_median", "cIoU@0.5 median"), ("auc_median", "AUC median"))


def table(results: dict, stats: dict) -> str:
  lines = ["| split | map | " + " | ".join(c[1] for c in COLUMNS) + " |",
           "|---|---|" + "---|" * len(COLUMNS)]
  for split, rows in results.items():
    for name, metrics in rows.items():
      cells = [f"{metrics[k][0]:.3f} [{metrics[k][1][0]:.3f}, {metrics[k][1][1]:.3f}]"
               for k, _ in COLUMNS]
      lines.append(f"| {split} | {name} | " + " | ".join(cells) + " |")
  lines.append("")
  for split, s in stats.items():
    lines.append(f"- {split} (n={s['n']}): sounding box fraction of the image {s['fraction']:.3f} "
                 f"(median {s['fraction_median']:.3f}); median-rule cIoU ceiling min(1, 2f) "
                 f"{s['ceiling']:.3f} on average; cIoU >= 0.5 reachable under the median rule "
                 f"in {s['reachable']:.3f} of the images; silent boxes per image "
                 f"{s['silent_per_image']:.2f}.")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data_dir", default=os.environ.get("SOUNDLOC_DATA_DIR",
                                                      os.path.expanduser("~/tensorflow_datasets")))
  p.add_argument("--config", default="default", help="stamps builder config name")
  p.add_argument("--draws", type=int, default=20, help="random maps per image (chance row)")
  args = p.parse_args(argv)
  name = f"stamps/{args.config}"
  results, stats = {}, {}
  for split in SPLITS:
    sounding, silent, size, fmt, source = load_split(name, split, args.data_dir)
    n = len(sounding)
    fraction = sounding.reshape(n, -1).mean(axis=1)
    stats[split] = {"n": n, "fraction": float(fraction.mean()),
                    "fraction_median": float(np.median(fraction)),
                    "ceiling": float(np.minimum(1, 2 * fraction).mean()),
                    "reachable": float(np.mean(2 * fraction >= 0.5)),
                    "silent_per_image": float(np.mean([len(s) for s in silent]))}
    cells = size // STRIDE
    rng = np.random.default_rng(0)
    rows = {"oracle (box)": score(sounding, sounding, silent),
            f"oracle cells ({cells}x{cells})": score(oracle_cells(source, fmt, size), sounding,
                                                     silent),
            f"random {cells}x{cells} (mean of {args.draws})": score_draws(
                [score(rng.uniform(size=(n, cells, cells)).astype(np.float32), sounding, silent)
                 for _ in range(args.draws)]),
            "centre Gaussian (sigma = side / 4)": score(centre_map(n), sounding, silent)}
    results[split] = rows
  print(table(results, stats))


if __name__ == "__main__":
  main()
