"""The step benchmark (`benchmarks/train_step.py`) at toy shapes on the CPU:
one JSON line per config, and its FLOP counts say that the step it timed is
the one asked for (HardPos runs two inputs per base sample, ICL adds the
teacher's forward). GPU numbers are recorded in benchmarks/RESULTS.md."""

import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = ["--batch", "8", "--image_size", "32", "--spec", "32x31", "--width", "4",
       "--dtype", "float32", "--steps", "1", "--warmup", "0"]


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location(
      "train_step_bench", os.path.join(REPO, "benchmarks", "train_step.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(bench, capsys, *flags):
  bench.main([*flags, *TOY])
  lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
  assert len(lines) == 1, lines
  return json.loads(lines[0])


def test_step_benchmark_times_the_requested_step(bench, capsys):
  lvs = _run(bench, capsys, "--config=configs/lvs.py:,variant=vanilla")
  hardpos = _run(bench, capsys, "--config=configs/hard_positive.py:,neighbours=random")
  icl_student = _run(bench, capsys, "--config=configs/iterative.py", "--teacher=off")
  icl = _run(bench, capsys, "--config=configs/iterative.py", "--teacher=on")
  for r in (lvs, hardpos, icl):
    assert r["samples_per_s"] > 0 and r["batch"] == 8 and r["flops_per_step"] > 0
    assert r["mfu"] is None and r["platform"] == "cpu"  # no peak is claimed for a CPU
  assert (lvs["method"], hardpos["method"], icl["method"]) == ("lvs_vanilla", "hardpos", "icl")
  assert (lvs["teacher"], hardpos["inputs_per_sample"]) == ("n/a", 2)
  # Two forward/backward passes per base sample: about twice the FLOPs.
  assert 1.8 < hardpos["flops_per_step"] / lvs["flops_per_step"] < 2.3
  # The teacher adds one forward (~1/3 of a forward + backward).
  assert 1.15 < icl["flops_per_step"] / icl_student["flops_per_step"] < 1.6


@pytest.mark.parametrize("config_arg,pooling", [
    ("configs/lvs.py", "mean"), ("configs/lvs.py", "masked"),
    ("configs/lvs.py:,variant=vanilla", "masked"), ("configs/iterative.py", None),
    ("configs/ezvsl.py", None)])
def test_torch_peer_computes_our_loss(bench, config_arg, pooling):
  """The `--torch` peer's loss equals ours on the same features, so the speed
  ratio compares the same work. Runs where torch is installed (the GPU
  machine; here `pip install torch==2.13.0` in a separate venv); CI has none."""
  torch = pytest.importorskip("torch")
  import numpy as np

  from soundloc_jax import methods
  config = bench.load_config(config_arg)
  if pooling:
    config.method.negative_pooling = pooling
  rng = np.random.default_rng(0)
  # Patches scattered around a shared direction, so soft masks are partial.
  v = rng.normal(size=(6, 5, 4, 16)) + 2.0 * rng.normal(size=16)
  a = rng.normal(size=(6, 16)) + 2.0 * rng.normal(size=16)
  v /= np.linalg.norm(v, axis=-1, keepdims=True)
  a /= np.linalg.norm(a, axis=-1, keepdims=True)
  v, a = v.astype(np.float32), a.astype(np.float32)
  ours, _ = methods.get(config.method.name).loss(
      {"visual_features": v, "audio_embedding": a}, None, {}, config.method, None)
  loss_fn, _ = bench._torch_loss(torch, config.method)
  theirs = loss_fn(torch.from_numpy(v).permute(0, 3, 1, 2), torch.from_numpy(a))
  assert 0.05 < float(ours) < 50
  np.testing.assert_allclose(float(theirs), float(ours), rtol=1e-5)


def test_cpu_ops_benchmark_prints_one_line_per_case(capsys, monkeypatch):
  spec = importlib.util.spec_from_file_location(
      "cpu_ops_bench", os.path.join(REPO, "benchmarks", "cpu_ops.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  monkeypatch.setattr(module, "POOLS", ((2, 9, 8, 3),))
  monkeypatch.setattr(module, "NORMS", ((2, 4, 4, 3),))
  monkeypatch.setattr(module, "CONVS", (((2, 2, 4, 3), 3, 4, 1, 1),))
  module.main(["--reps", "1"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
  assert [r["op"] for r in rows] == ["max_pool 3x3/2", "batchnorm+relu (train)", "conv 3x3/1 -> 4"]
  assert all(r[f"{impl}_{part}_ms"] > 0 for r in rows for impl in ("plain", "cpu")
             for part in ("fwd", "fwd_bwd"))
