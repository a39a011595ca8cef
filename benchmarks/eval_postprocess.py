"""Times evaluation post-processing + scoring of a VGG-SS-sized test set.

5,158 random 14x14 response maps are resized to 224, turned into LVS median
predictions and scored (cIoU) against random VGG-SS-like box gt maps, in
chunks of 512 maps to bound memory; then the summary (cIoU@0.5, AUC and
1,000-resample bootstrap intervals) is computed. Building the gt maps is not
timed (it is data loading). Prints one JSON line.

  python benchmarks/eval_postprocess.py [--n 5158] [--chunk 512] [--threads 1]
"""

import argparse
import json
import time

import numpy as np

from soundloc_jax.evaluation import annotations, protocol


def random_vggss_gt(rng, n, size=224):
  """Binary gt maps from 1-2 random normalised boxes per sample."""
  gts = np.zeros((n, size, size), np.uint8)
  for i in range(n):
    boxes = []
    for _ in range(rng.integers(1, 3)):
      x0, y0 = rng.uniform(-0.05, 0.7, 2)
      w, h = rng.uniform(0.1, 0.6, 2)
      boxes.append([x0, y0, x0 + w, y0 + h])
    gts[i] = annotations.vggss_gt_map(boxes, size)
  return gts


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", type=int, default=5158)
  parser.add_argument("--chunk", type=int, default=512)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--feat", type=int, default=14)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=None,
                      help="score_maps num_threads (default: CPU count, <= 4)")
  args = parser.parse_args()

  rng = np.random.default_rng(args.seed)
  responses = rng.standard_normal((args.n, args.feat, args.feat)).astype(
      np.float32)
  cious = np.empty((args.n,), np.float64)
  timed = 0.0
  for a in range(0, args.n, args.chunk):
    b = min(a + args.chunk, args.n)
    gts = random_vggss_gt(rng, b - a, args.size)
    t0 = time.perf_counter()
    cious[a:b] = protocol.score_maps(responses[a:b], gts, protocol="median",
                                       size=args.size,
                                       num_threads=args.threads)
    timed += time.perf_counter() - t0
  t0 = time.perf_counter()
  summary = protocol.summarize(cious, n_bootstrap=1000, seed=0)
  summary_s = time.perf_counter() - t0
  total = timed + summary_s
  print(json.dumps({
      "n": args.n,
      "size": args.size,
      "protocol": "median",
      "threads": args.threads,
      "seconds": round(total, 3),
      "maps_per_s": round(args.n / total, 1),
      "postprocess_score_seconds": round(timed, 3),
      "summary_seconds": round(summary_s, 3),
      "ciou@0.5": round(summary["ciou"], 4),
      "auc": round(summary["auc"], 4),
  }))


if __name__ == "__main__":
  main()
