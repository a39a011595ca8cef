"""ICL's teacher guard: the teacher starts only once the model passes it
(methods/icl.py `teacher_guard`, methods/registry.py `TeacherSchedule`)."""

import json
import os

import numpy as np
import pytest

from soundloc_jax import errors, methods, train
from soundloc_jax.configs import iterative
from soundloc_jax.methods import icl
from tests.helpers import tiny_config, unit_rows


def test_inter_positive_rate_matches_a_loop():
  rng = np.random.default_rng(0)
  base = unit_rows(rng.normal(size=(4, 8)))
  audio = unit_rows(base[rng.integers(0, 4, 30)] + 0.1 * rng.normal(size=(30, 8)))
  for delta in (0.9, 0.99, -1.0):
    pairs = [(i, j) for i in range(30) for j in range(30) if i != j]
    expected = sum(float(audio[i] @ audio[j]) >= delta for i, j in pairs) / len(pairs)
    assert icl.inter_positive_rate(audio, delta) == pytest.approx(expected)
  assert icl.inter_positive_rate(audio, -1.0) == 1.0


def _method_cfg(**overrides):
  cfg = iterative.get_config("").method
  cfg.update(overrides)
  return cfg


def test_guard_needs_ranks_well_above_chance_and_few_inter_positives():
  cfg = _method_cfg()  # rank <= 25% of n, inter rate <= 50%, delta_a 0.99
  rng = np.random.default_rng(1)
  spread = unit_rows(rng.normal(size=(100, 16)))            # cosines ~0: rate 0
  collapsed = unit_rows(np.ones((100, 16)) + 1e-3 * rng.normal(size=(100, 16)))  # rate 1
  good = {"median_rank": 20.0, "n": 100}
  chance = {"median_rank": 50.0, "n": 100}
  assert icl.teacher_guard(good, spread, cfg)[0]
  ready, report = icl.teacher_guard(chance, spread, cfg)
  assert not ready and "median rank 50 of 100" in report
  ready, report = icl.teacher_guard(good, collapsed, cfg)
  assert not ready and "100.0%" in report
  cfg.teacher_guard = False  # off: always ready, the report still measured
  assert icl.teacher_guard(chance, collapsed, cfg)[0]


class _Guard:
  """A guard that answers from a list, to drive TeacherSchedule by hand."""

  def __init__(self, answers):
    self.answers, self.calls = list(answers), 0

  def __call__(self, metrics, audio, cfg):
    self.calls += 1
    return self.answers.pop(0), "report"


def test_schedule_starts_after_the_first_ready_epoch_and_keeps_it():
  guard = _Guard([False, True, False])
  method = methods.Method("guarded", None, needs_teacher=True, teacher_guard=guard,
                          teacher_active=lambda epoch, cfg: epoch >= cfg.init_epochs)
  cfg = _method_cfg(init_epochs=2)
  schedule = methods.TeacherSchedule.from_meta(method, cfg, {})
  assert schedule.started_at is None and schedule.meta() == {"teacher_from_epoch": -1}
  assert schedule.after_validation(0, {}, None) is None and guard.calls == 0  # not due yet
  assert schedule.after_validation(1, {}, None)[0] == "warning"   # due, held back
  assert not schedule.active(2)
  assert schedule.after_validation(2, {}, None)[0] == "info"      # ready: starts at 3
  assert (schedule.started_at, schedule.active(2), schedule.active(3)) == (3, False, True)
  assert schedule.after_validation(3, {}, None)[0] == "warning"   # fails later: stays on
  assert schedule.active(4) and schedule.meta() == {"teacher_from_epoch": 3}
  # Resumed: from the checkpoint's meta; a checkpoint from before the guard
  # (no key) started at init_epochs, as that run did.
  assert methods.TeacherSchedule.from_meta(method, cfg, {"teacher_from_epoch": 3}).started_at == 3
  assert methods.TeacherSchedule.from_meta(method, cfg, {"teacher_from_epoch": -1}).started_at \
      is None
  assert methods.TeacherSchedule.from_meta(method, cfg, {"step": 40}).started_at == 2
  # Guard switched off in the config: due at init_epochs, epoch 0 included.
  off = methods.TeacherSchedule.from_meta(method, _method_cfg(init_epochs=0, teacher_guard=False),
                                          {})
  assert off.active(0) and off.meta() == {"teacher_from_epoch": 0}
  unguarded = methods.Method("plain", None, teacher_active=lambda epoch, cfg: epoch >= 1)
  plain = methods.TeacherSchedule.from_meta(unguarded, cfg, {})
  assert plain.after_validation(0, {}, None) is None and plain.active(1) and not plain.active(0)


def _teacher_flags(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["teacher"] for r in records if r["split"] == "train"}


def test_an_untrained_teacher_does_not_start_icl(demo_data_dir, tmp_path, capfd):
  """Learning rate 0 keeps the model untrained: with the guard the run stays on
  Eq. 3 past init_epochs and says why; without it the teacher starts."""
  overrides = {"num_epochs": 2, "optimizer.learning_rate": 0.0, "method.init_epochs": 1,
               "method.teacher_guard": True}
  train.train_and_evaluate(tiny_config(demo_data_dir, **overrides), str(tmp_path / "guarded"))
  flags = _teacher_flags(tmp_path / "guarded")
  assert flags and not any(flags.values())
  err = capfd.readouterr().err
  assert "teacher held back after epoch 0" in err and "median rank" in err
  train.train_and_evaluate(tiny_config(demo_data_dir, **dict(overrides, **{
      "method.teacher_guard": False})), str(tmp_path / "unguarded"))
  flags = _teacher_flags(tmp_path / "unguarded")  # 24 steps per epoch, logged every 4
  assert not flags[24] and all(flags[s] for s in flags if s > 24)


def test_a_resumed_run_keeps_the_guards_decision(demo_data_dir, tmp_path):
  """The guard passes at the end of epoch 0 (thresholds at their loosest);
  a run stopped inside epoch 1 and resumed keeps using the teacher, although
  no validation runs again before the rest of epoch 1."""
  overrides = {"num_epochs": 2, "method.init_epochs": 1, "method.teacher_guard": True,
               "method.teacher_guard_rank": 1.0, "method.teacher_guard_max_inter": 1.0,
               "checkpoint.every_steps": 4}
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(demo_data_dir, max_steps=32, **overrides), workdir)
  train.train_and_evaluate(tiny_config(demo_data_dir, **overrides), workdir)
  flags = _teacher_flags(workdir)
  assert flags[24] is False and all(flags[s] for s in flags if s > 24)
  assert max(flags) == 48 and 36 in flags  # records after the resume exist


def test_guard_thresholds_and_validation_retrieval_are_checked(demo_data_dir, tmp_path):
  with pytest.raises(errors.ConfigError, match="teacher_guard_rank"):
    methods.get("icl").check_config(_method_cfg(teacher_guard_rank=1.5))
  config = tiny_config(demo_data_dir, max_steps=1, **{"method.teacher_guard": True,
                                                      "evals.validation": ("localization",)})
  with pytest.raises(errors.ConfigError, match="add 'retrieval' to config.evals.validation"):
    train.train_and_evaluate(config, str(tmp_path))


def test_without_the_guard_init_epochs_0_iterates_from_the_first_step(demo_data_dir, tmp_path):
  """The first teacher is the model the run starts from (the copy made at
  step 0), so a run with `init_epochs=0` and no guard uses it from step 1."""
  overrides = {"num_epochs": 1, "method.init_epochs": 0, "method.teacher_guard": False}
  train.train_and_evaluate(tiny_config(demo_data_dir, max_steps=8, **overrides),
                           str(tmp_path / "run"))
  flags = _teacher_flags(tmp_path / "run")
  assert flags and all(flags.values())
