"""`--mode=eval` keeps each evaluation's report under the checkpoint step it
scored (`eval/<split>/step_<N>/`), `eval/<split>/` holds the latest, and
nothing is replaced without a line saying so."""

import json
import os

from soundloc_jax import evaluate, train
from tests.helpers import tiny_config


def _report(path):
  with open(os.path.join(path, "metrics.json")) as f:
    return json.load(f)


def test_reports_are_kept_per_step_and_the_latest_is_named(demo_data_dir, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  config = tiny_config(demo_data_dir, num_epochs=2)  # checkpoints at steps 24 and 48
  train.train_and_evaluate(config, workdir)
  root = os.path.join(workdir, "eval", "test")
  final = _report(os.path.join(root, "step_48"))
  assert final["step"] == 48 and final["report_dir"] == "step_48"
  assert _report(root) == final  # the latest, copied up: what scripts/compare_methods.py reads
  for name in ("success_curve.png", "overlays.png"):
    with open(os.path.join(root, name), "rb") as a, open(os.path.join(root, "step_48", name),
                                                          "rb") as b:
      assert a.read() == b.read()
  capsys.readouterr()

  # An earlier checkpoint: a report of its own; step 48's stays, and the line says where.
  evaluate.evaluate_checkpoint(config, workdir, step=24)
  out = capsys.readouterr().out
  assert "step 48's stays in" in out and os.path.join(root, "step_48") in out
  early = _report(os.path.join(root, "step_24"))
  assert early["step"] == 24 and _report(root) == early
  assert _report(os.path.join(root, "step_48")) == final
  assert early["per_sample"] != final["per_sample"]  # another model's scores

  # The same step again: replaced, with a warning naming it.
  evaluate.evaluate_checkpoint(config, workdir, step=24)
  err = capsys.readouterr().err
  assert "replacing the earlier report of step 24" in err
  assert sorted(os.listdir(root)) == ["metrics.json", "overlays.png", "step_24", "step_48",
                                      "success_curve.png"]

  # Every evaluation is a record of metrics.jsonl at the step it scored.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    tests = [r for r in map(json.loads, f) if r["split"] == "test"]
  assert [r["step"] for r in tests] == [48, 24, 24]
  assert tests[0]["ciou"] == final["ciou"] and tests[1]["ciou"] == early["ciou"]


def test_a_report_from_before_steps_is_moved_aside(demo_data_dir, tmp_path, capsys):
  """A workdir evaluated by an older version (eval/test/metrics.json without a
  step) keeps that report in `unversioned_<time>/`."""
  workdir = str(tmp_path / "run")
  config = tiny_config(demo_data_dir, num_epochs=1)
  train.train_and_evaluate(config, workdir)
  root = os.path.join(workdir, "eval", "test")
  legacy = _report(root)
  legacy.pop("step")
  legacy.pop("report_dir")
  with open(os.path.join(root, "metrics.json"), "w") as f:
    json.dump(legacy, f)
  capsys.readouterr()
  evaluate.evaluate_checkpoint(config, workdir)
  assert "held a report without a step: moved to" in capsys.readouterr().err
  kept = [d for d in os.listdir(root) if d.startswith("unversioned_")]
  assert len(kept) == 1
  assert _report(os.path.join(root, kept[0])) == legacy
  assert _report(root)["step"] == 24
