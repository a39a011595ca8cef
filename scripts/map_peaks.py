"""Where the raw response maps of finished runs peak, on a test split.

  python scripts/map_peaks.py WORKDIR [WORKDIR ...] [--split=test]

For each run (its latest checkpoint, its own config): the fraction of images
whose raw `h x w` map peaks on the map's outer ring of cells, against the
ring's share of cells and the fraction of annotated boxes whose centre of
mass lies there. A map drawn to the image border (padding artefacts, which a
mean-pooled objective does not penalise) peaks on the ring far more often
than the boxes lie there. Used for the ICL reading of
docs/results.md#real-media-benchmark-stamps.
"""

from __future__ import annotations

import argparse

import numpy as np


def ring_mask(h: int, w: int) -> np.ndarray:
  ring = np.zeros((h, w), bool)
  ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = True
  return ring


def box_cells(gt_maps: np.ndarray, h: int, w: int) -> np.ndarray:
  """`[N, 2]` (row, col) cell of each gt map's centre of mass on an h x w grid."""
  gt = np.asarray(gt_maps, np.float64)
  size_y, size_x = gt.shape[-2:]
  mass = gt.sum(axis=(1, 2))
  y = (gt.sum(axis=2) * np.arange(size_y)).sum(axis=1) / mass
  x = (gt.sum(axis=1) * np.arange(size_x)).sum(axis=1) / mass
  return np.stack([np.floor(y * h / size_y), np.floor(x * w / size_x)], axis=1).astype(int)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("workdirs", nargs="+")
  p.add_argument("--split", default="test")
  args = p.parse_args(argv)
  from soundloc_jax import checkpointing, data, state as state_lib, workdir as workdir_lib
  from soundloc_jax.evaluation import evaluators
  for workdir in args.workdirs:
    config = workdir_lib.read_config(workdir)
    name, data_dir = data.prepare_data(config)
    graphdef, abstract = state_lib.create_model_state(config)
    model, _, step = checkpointing.restore_checkpoint(f"{workdir}/checkpoints", config, abstract,
                                                      source="the config")
    predict = state_lib.make_predict_fn(graphdef, outputs="all")
    source = data.open_source(name, args.split, data_dir)
    res = evaluators.SplitEvaluator(args.split, source, config, ("localization",)).run(
        lambda im, sp: predict(model["params"], model["batch_stats"], im, sp))
    maps = np.asarray(res.responses)
    n, h, w = maps.shape
    ring = ring_mask(h, w)
    peaks = ring.reshape(-1)[maps.reshape(n, -1).argmax(axis=1)]
    cells = box_cells(res.gt_maps, h, w)
    boxes = ring[cells[:, 0], cells[:, 1]]
    print(f"{workdir} (step {step}, {args.split}, n={n}, {h}x{w} maps): peak on the outer ring "
          f"{peaks.mean():.3f}; ring's share of cells {ring.mean():.3f}; box centres on it "
          f"{boxes.mean():.3f}; pointing {res.metrics['pointing']:.3f}", flush=True)


if __name__ == "__main__":
  main()
