"""The layers `models.cpu_ops` rewrites, plain against the CPU form, at the
ResNet-18s' shapes in the recipes (benchmarks/RESULTS.md, issue 34).

  python benchmarks/cpu_ops.py [--reps 5]

Prints one JSON line per case: the op, its shape, and the median ms of the
plain op and of the "cpu" form, forward and forward + backward (`jax.jit`,
float32, NHWC, on whatever backend JAX runs).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from soundloc_jax.models import cpu_ops

POOLS = ((16, 129, 150, 64), (16, 112, 112, 64), (64, 64, 75, 16), (64, 64, 64, 16))
NORMS = ((16, 56, 56, 64), (16, 129, 150, 64), (64, 32, 32, 16))
# (input shape, kernel, out channels, stride, pad): outputs of 2x4 and around it
CONVS = (((64, 2, 4, 128), 3, 128, 1, 1), ((64, 4, 7, 64), 3, 128, 2, 1),
         ((16, 2, 4, 512), 3, 512, 1, 1), ((16, 4, 7, 256), 3, 512, 2, 1),
         ((64, 3, 4, 128), 3, 128, 1, 1), ((64, 4, 4, 128), 3, 128, 1, 1),
         ((64, 4, 7, 128), 3, 128, 1, 1), ((64, 6, 6, 128), 3, 128, 1, 1))


def _median_ms(fn, *args, reps: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def _time(forward, x, reps):
  """`(forward ms, forward + backward ms)` of `forward(x)`, a pure function."""
  loss = lambda x: (forward(x) ** 2).mean()  # noqa: E731
  return (_median_ms(jax.jit(forward), x, reps=reps),
          _median_ms(jax.jit(jax.grad(loss)), x, reps=reps))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--reps", type=int, default=5)
  args = p.parse_args(argv)
  rng = np.random.default_rng(0)
  rows = []
  for shape in POOLS:
    x = jax.nn.relu(jnp.asarray(rng.standard_normal(shape), jnp.float32))
    rows.append(("max_pool 3x3/2", shape, {
        impl: _time(lambda v, impl=impl: cpu_ops.max_pool(v, 3, 2, 1, impl), x, args.reps)
        for impl in ("plain", "cpu")}))
  for shape in NORMS:
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    times = {}
    for impl in ("plain", "cpu"):
      def forward(v, impl=impl):  # a fresh module per trace: its statistics stay in it
        return jax.nn.relu(cpu_ops.BatchNorm(v.shape[-1], rngs=nnx.Rngs(0), impl=impl)(v))
      times[impl] = _time(forward, x, args.reps)
    rows.append(("batchnorm+relu (train)", shape, times))
  for shape, k, cout, stride, pad in CONVS:
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, shape[-1], cout)) * 0.05, jnp.float32)
    plain = lambda v, w=w, s=stride, q=pad: jax.lax.conv_general_dilated(  # noqa: E731
        v, w, (s, s), ((q, q), (q, q)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    fast = lambda v, w=w, s=stride, q=pad: cpu_ops.conv_im2col(v, w, s, q)  # noqa: E731
    rows.append((f"conv {k}x{k}/{stride} -> {cout}", shape,
                 {"plain": _time(plain, x, args.reps), "cpu": _time(fast, x, args.reps)}))
  for op, shape, times in rows:
    print(json.dumps({"op": op, "shape": list(shape), "backend": jax.default_backend(),
                      **{f"{impl}_{part}_ms": round(times[impl][i], 2)
                         for impl in ("plain", "cpu") for i, part in enumerate(("fwd", "fwd_bwd"))}}),
          flush=True)


if __name__ == "__main__":
  main()
