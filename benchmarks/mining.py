"""Benchmark of HardPos neighbour mining (`soundloc_jax.methods.mining`).

Prints one JSON line: n, d, k, block_size, seconds (wall time of
`topk_neighbours`, including the one compile), peak RSS of the process in MiB
and, on an accelerator, the device's peak memory in MiB.

  python benchmarks/mining.py [--n 20000] [--d 512] [--k 1000] [--block_size 1024]
"""

import argparse
import json
import platform
import resource
import time

import jax
import numpy as np

from soundloc_jax.methods import mining


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", type=int, default=20000)
  parser.add_argument("--d", type=int, default=512)
  parser.add_argument("--k", type=int, default=1000)
  parser.add_argument("--block_size", type=int, default=1024)
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  emb = rng.normal(size=(args.n, args.d)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  start = time.perf_counter()
  indices, scores = mining.topk_neighbours(emb, args.k, block_size=args.block_size)
  seconds = time.perf_counter() - start
  assert indices.shape == (args.n, args.k) and np.all(np.diff(scores, axis=1) <= 0)
  peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
  try:  # accelerators: the device's own peak (the n x n matrix must never be there)
    device_peak = (jax.local_devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  except Exception:
    device_peak = None
  print(json.dumps({"benchmark": "mining.topk_neighbours", "n": args.n, "d": args.d,
                    "k": args.k, "block_size": args.block_size, "seconds": round(seconds, 2),
                    "peak_rss_mib": round(peak_rss_mib, 1),
                    "device_peak_mib": round(device_peak / 2**20, 1) if device_peak else None,
                    "device": jax.local_devices()[0].device_kind, "backend": jax.default_backend(),
                    "cpus": jax.device_count(), "machine": platform.machine()}))


if __name__ == "__main__":
  main()
