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
