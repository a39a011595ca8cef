"""Crash safety: kill -9 at random moments (and during checkpoint writes), rerun
the same command, get the uninterrupted run's result; damaged checkpoints
are never used.

The kill test drives `python -m soundloc_jax.main` as a user would; the
reference run is in-process with the same config. Both run the same XLA
executables (the persistent compilation cache) on the same inputs (the input
stream is a function of the step), so the final states must be bit-identical.
"""

import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from soundloc_jax.configs import iterative
from soundloc_jax import checkpointing, errors, evaluate, inference, train
from soundloc_jax import state as train_state
from soundloc_jax.workdir import MetricsWriter
from tests.helpers import set_fields

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 256 training examples, batch 32: 8 steps per epoch, 2 epochs, a checkpoint
# every 2 steps, so kills land before, between and during checkpoint writes
# and around the epoch end (teacher refresh, validation, best checkpoint).
DATASET = "av_digits/small_256_64_64"
STEPS_PER_EPOCH = 8
OVERRIDES = {"dataset.name": DATASET, "model.width": 4, "batch_size": 32, "num_epochs": 2,
             "method.init_epochs": 1, "checkpoint.every_steps": 2, "log_every_steps": 4,
             "eval.batch_size": 64, "eval.num_overlays": 2, "dataset.test_splits": ("test",)}
STATE_KEYS = ("step", "params", "batch_stats", "teacher_params", "teacher_batch_stats",
              "opt_state", "rng")


def _config(data_dir, **extra):
  c = iterative.get_config("")
  c.dataset.data_dir = data_dir
  return set_fields(c, {**OVERRIDES, **extra})


def _flags(data_dir, workdir):
  def fmt(v):
    return f"({', '.join(repr(x) for x in v)},)" if isinstance(v, tuple) else str(v)
  return ["--config=configs/iterative.py", f"--workdir={workdir}",
          f"--config.dataset.data_dir={data_dir}",
          *(f"--config.{k}={fmt(v)}" for k, v in OVERRIDES.items())]


def _restore(directory, config, step=None):
  _, abstract = train_state.create_train_state(config, train_state.make_optimizer(config))
  state, _, step = checkpointing.restore_checkpoint(directory, config, abstract, step)
  return step, jax.tree.map(np.asarray, state)


def _assert_states_equal(a, b):
  for key in STATE_KEYS:
    jax.tree.map(np.testing.assert_array_equal, a[key], b[key])


def _complete_steps(directory):
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) \
      if os.path.isdir(directory) else []


def _writes_in_progress(workdir):
  return set(glob.glob(os.path.join(workdir, "checkpoints*", "*.orbax-checkpoint-tmp*")))


@pytest.fixture(scope="module")
def reference(demo_data_dir, tmp_path_factory):
  """An uninterrupted in-process run that keeps every checkpoint."""
  workdir = str(tmp_path_factory.mktemp("crash") / "reference")
  config = _config(demo_data_dir, **{"checkpoint.max_to_keep": 100})
  train.train_and_evaluate(config, workdir)
  return workdir, config


@pytest.mark.slow
def test_kill_9_at_random_moments_then_rerun_equals_uninterrupted_run(reference, demo_data_dir,
                                                                       tmp_path):
  """~2 min on 2 cores: four SIGKILLs (two in the middle of a checkpoint
  write), each followed by the same command, until the run completes. The
  kill moments are random (seed printed; SOUNDLOC_CRASH_SEED replays one)."""
  ref_dir, config = reference
  workdir = str(tmp_path / "killed")
  command = [sys.executable, "-m", "soundloc_jax.main", *_flags(demo_data_dir, workdir)]
  seed = int(os.environ.get("SOUNDLOC_CRASH_SEED", time.time_ns() % 10_000))
  rng = random.Random(seed)
  log_path = str(tmp_path / "log.txt")
  # (name, when to kill): during any checkpoint write; a random moment of
  # training; during a write after the first epoch end; a random moment again.
  plan = ["write", "random", "late_write", "random"]
  kills, resumed_from, mid_write = [], [], []
  for attempt in range(len(plan) + 1):
    kind = plan[attempt] if attempt < len(plan) else None
    before_tmp = _writes_in_progress(workdir)
    complete_before = _complete_steps(os.path.join(workdir, "checkpoints"))
    with open(log_path, "w") as log:
      proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    # "random": a random moment tied to progress (so it lands before the end
    # on any machine): 0-0.4 s after the 1st or 2nd checkpoint this run writes.
    wait_for, delay = rng.choice((1, 2)), rng.uniform(0.0, 0.4)
    t_ready = t_training = None
    killed = False
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
      if kind is not None:
        with open(log_path) as f:
          text = f.read()
        if t_training is None and "Training icl" in text:
          t_training = time.time()
        written = set(_complete_steps(os.path.join(workdir, "checkpoints"))) - set(complete_before)
        if t_ready is None and len(written) >= wait_for:
          t_ready = time.time()
        new_tmp = _writes_in_progress(workdir) - before_tmp
        late = [p for p in new_tmp
                if int(os.path.basename(p).split(".")[0]) > STEPS_PER_EPOCH]
        if ((kind == "write" and new_tmp) or (kind == "late_write" and late)
            or (kind == "random" and t_ready and time.time() - t_ready > delay)):
          proc.send_signal(signal.SIGKILL)
          proc.wait()
          killed = True
          left = _writes_in_progress(workdir) - before_tmp
          kills.append((kind, round(time.time() - (t_training or time.time()), 2),
                        sorted(os.path.basename(p) for p in left)))
          if kind != "random":
            assert left, "killed while writing, but no partial checkpoint was left"
            mid_write.extend(left)
          break
      time.sleep(0.002)
    if proc.poll() is None:
      proc.kill()
      pytest.fail(f"attempt {attempt} did not finish in 240 s")
    with open(log_path) as f:
      text = f.read()
    m = re.search(r"Resuming from checkpoint step (\d+)", text)
    resumed_from.append(int(m.group(1)) if m else 0)
    # Each rerun starts from the last checkpoint that was complete when it began.
    assert resumed_from[-1] == (complete_before[-1] if complete_before else 0), text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    if not killed:
      assert proc.returncode == 0, text[-3000:]
      break
  print(f"seed {seed}: kills {kills}; resumed from {resumed_from}")
  assert not killed, "the last rerun was killed too"
  assert len(kills) >= 3 and mid_write, kills

  final_ref = _restore(os.path.join(ref_dir, "checkpoints"), config)
  final = _restore(os.path.join(workdir, "checkpoints"), config)
  assert final[0] == final_ref[0] == 2 * STEPS_PER_EPOCH
  _assert_states_equal(final[1], final_ref[1])
  # Same best epoch, same validation numbers, same test report.
  best = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints_best"))
  best_ref = checkpointing.Checkpointer(os.path.join(ref_dir, "checkpoints_best"))
  assert best.all_steps() == best_ref.all_steps()
  assert best.restore_meta(best.latest_step()) == best_ref.restore_meta(best_ref.latest_step())
  best.close()
  best_ref.close()
  with open(os.path.join(workdir, "eval", "test", "metrics.json")) as f, \
      open(os.path.join(ref_dir, "eval", "test", "metrics.json")) as g:
    assert json.load(f)["per_sample"] == json.load(g)["per_sample"]
  # Every metrics line is JSON even though runs died mid-write.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert {r["step"] for r in records if r["split"] == "validation"} == {8, 16}


def _corrupt(step_dir):
  """Truncate every array data file of a checkpoint (a disk fault / bad copy)."""
  files = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
           if os.path.isfile(p)]
  assert files
  for p in files:
    with open(p, "r+b") as f:
      f.truncate(8)


@pytest.mark.parametrize("damage", ["truncated arrays", "empty folder", "garbage metadata"])
def test_damaged_checkpoint_is_never_used(reference, demo_data_dir, tmp_path, capsys, damage):
  ref_dir, config = reference
  # The reference run as it was at step 6 (checkpoints 4 and 6), whose step 6
  # is then damaged.
  workdir = str(tmp_path / "run")
  shutil.copytree(ref_dir, workdir, ignore=shutil.ignore_patterns("checkpoints_best", "eval"))
  ckpt_dir = os.path.join(workdir, "checkpoints")
  for step in _complete_steps(ckpt_dir):
    if step not in (4, 6):
      shutil.rmtree(os.path.join(ckpt_dir, str(step)))
  step_dir = os.path.join(ckpt_dir, "6")
  if damage == "truncated arrays":
    _corrupt(step_dir)
  elif damage == "empty folder":
    shutil.rmtree(step_dir)
    os.makedirs(step_dir)
  else:
    with open(os.path.join(step_dir, "state", "_METADATA"), "w") as f:
      f.write("{not json")

  # Orbax still lists it; loading it for inference or evaluation is a clear
  # error naming the folder and the steps that are left.
  assert checkpointing.Checkpointer(ckpt_dir).latest_step() == 6
  with pytest.raises(errors.CorruptCheckpointError, match=r"step 6 in .*cannot be read") as e:
    inference.load(workdir)
  assert ckpt_dir in str(e.value) and "available: 4, 6" in str(e.value)
  with pytest.raises(errors.CorruptCheckpointError, match="step 6"):
    evaluate.evaluate_checkpoint(config, workdir)
  capsys.readouterr()
  if damage != "truncated arrays":  # the same path as below; one training run is enough
    ckpt = checkpointing.Checkpointer(ckpt_dir)
    _, abstract = train_state.create_train_state(config, train_state.make_optimizer(config))
    _, _, step = checkpointing.restore_latest_readable(ckpt, config, abstract)
    ckpt.close()
    assert step == 4 and os.path.isdir(step_dir + ".corrupt")
    return

  # Resuming moves it aside, warns, and continues from step 4: the result
  # equals the uninterrupted run's at step 8.
  train.train_and_evaluate(_config(demo_data_dir, max_steps=8), workdir)
  err = capsys.readouterr().err
  assert f"moved it to {step_dir}.corrupt" in err and "step 6" in err
  assert os.path.isdir(step_dir + ".corrupt")
  assert _complete_steps(ckpt_dir) == [6, 8]
  _assert_states_equal(_restore(ckpt_dir, config, 8)[1],
                       _restore(os.path.join(ref_dir, "checkpoints"), config, 8)[1])


def test_half_written_metrics_line_is_dropped(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "split": "train"}\n{"step": 2, "spl')
  writer = MetricsWriter(str(tmp_path))
  writer.write({"step": 2, "split": "train"})
  assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [1, 2]
