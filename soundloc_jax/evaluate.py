"""Scoring a trained student on the test splits: at the end of training and
with `--mode=eval` (`evaluate_checkpoint`, which restores the checkpoint's
model item alone). Each entry of `config.dataset.test_splits` is scored with
the evaluators of `config.evals.test` (`evaluation.evaluators`).

Reports: each evaluation's report (`evaluation.plots.write_report`:
metrics.json, success_curve.png, overlays.png) goes to
`workdir/eval/<entry>/step_<N>/`, N being the checkpoint step it scored, and
is copied to `workdir/eval/<entry>/`, which so always holds the latest
evaluation; its metrics.json names the step (`step`, `report_dir`). Scoring a
step again replaces that step's report, and says so; a report from before
reports were kept by step (no `step` field) is moved to
`eval/<entry>/unversioned_<time>/` first. The scores also go to
metrics.jsonl and TensorBoard as `split: <entry>` at step N
(`workdir.MetricsWriter`).
"""

from __future__ import annotations

import json
import os
import shutil
import time

import jax

from soundloc_jax import checkpointing, data, distributed
from soundloc_jax import state as state_lib
from soundloc_jax import workdir as workdir_lib
from soundloc_jax.errors import TrainingError
from soundloc_jax.evaluation import evaluators, objectness, plots

REPORT_FILES = ("metrics.json", "success_curve.png", "overlays.png")


def report_dir(workdir: str, entry: str) -> str:
  """`workdir/eval/<entry>`: the latest report of test entry `entry`."""
  return os.path.join(workdir, "eval", entry.replace("/", "_").replace(":", "_"))


def _recorded_step(path: str):
  """The `step` of a report's metrics.json; None without one (an older report)."""
  try:
    with open(path) as f:
      return json.load(f).get("step")
  except (OSError, ValueError, AttributeError):
    return None


def _keep_unversioned(root: str) -> str | None:
  """Move a latest report that names no step into `unversioned_<mtime>/`."""
  metrics = os.path.join(root, "metrics.json")
  if not os.path.exists(metrics) or _recorded_step(metrics) is not None:
    return None
  dest = os.path.join(root, time.strftime("unversioned_%Y%m%d-%H%M%S",
                                          time.localtime(os.path.getmtime(metrics))))
  os.makedirs(dest, exist_ok=True)
  for name in REPORT_FILES:
    if os.path.exists(os.path.join(root, name)):
      os.replace(os.path.join(root, name), os.path.join(dest, name))
  return dest


def write_step_report(res, workdir: str, entry: str, step: int, source, config) -> str:
  """`res`'s report in `eval/<entry>/step_<step>/`, copied up as the latest
  (process 0); returns the step folder. Says what it replaces."""
  root = report_dir(workdir, entry)
  step_dir = os.path.join(root, f"step_{step}")
  if not distributed.is_primary():
    return step_dir
  os.makedirs(root, exist_ok=True)
  moved = _keep_unversioned(root)
  if moved:
    workdir_lib.warn(f"{root} held a report without a step: moved to {moved}")
  if os.path.exists(os.path.join(step_dir, "metrics.json")):
    workdir_lib.warn(f"{entry}: replacing the earlier report of step {step} in {step_dir}")
  previous = _recorded_step(os.path.join(root, "metrics.json"))
  plots.write_report(res, step_dir, source, config,
                     extra={"step": step, "report_dir": os.path.basename(step_dir)})
  for name in REPORT_FILES:
    path = os.path.join(root, name)
    if os.path.exists(os.path.join(step_dir, name)):
      shutil.copyfile(os.path.join(step_dir, name), f"{path}.tmp")
      os.replace(f"{path}.tmp", path)
    elif os.path.exists(path):  # e.g. a retrieval report has no success curve
      os.remove(path)
  if previous is not None and previous != step:
    workdir_lib.echo(f"{entry}: {root} now holds step {step}'s report; step {previous}'s stays "
                     f"in {os.path.join(root, f'step_{previous}')}")
  return step_dir


def evaluate_splits(config, workdir, graphdef, state, name, data_dir, splits,
                    predict=None, writer=None, step=None) -> dict:
  """Score `splits` with the state's student (the evaluators of
  `config.evals.test`); reports in `workdir/eval/<entry>/step_<step>/` (and
  the latest in `workdir/eval/<entry>/`), scores appended to `writer`.

  An entry is a split of the training dataset (`"test"`) or of another one
  (`"other_dataset:test"`, e.g. train on VGGSound, test on Flickr too).
  `step`: the checkpoint step scored (default `state["step"]`). With
  `config.eval.ogl.weights` set, the maps scored are EZ-VSL's OGL maps
  (`evaluation.objectness`).
  """
  predict = predict or state_lib.make_predict_fn(graphdef, outputs="all")
  if config.eval.ogl.weights:  # EZ-VSL's object-guided localisation at test time
    predict = objectness.with_ogl(predict, config.eval.ogl, config.eval.size)
  if step is None:
    step = int(jax.device_get(state["step"]))
  out = {}
  for entry in splits:
    split_name, split = name, entry
    if ":" in entry:
      other, split = entry.rsplit(":", 1)
      split_name = data.resolve_dataset(other, data_dir, config.dataset.build_if_missing)
    source = data.open_source(split_name, split, data_dir)
    res = evaluators.SplitEvaluator(entry, source, config, config.evals.test).run(
        lambda im, sp: predict(state["params"], state["batch_stats"], im, sp))
    where = write_step_report(res, workdir, entry, step, source, config)
    line = (f"{entry}: {res.describe(config.eval.success_threshold)}; report of step {step} in "
            f"{where}")
    if writer is not None:
      writer.write({"step": step, "split": entry, **res.metrics}, line)
    else:
      workdir_lib.echo(line)
    out[entry] = res.metrics
  return out


def evaluate_checkpoint(config, workdir: str, step: int | None = None,
                        best: bool = False) -> dict:
  """`--mode=eval`: load the student of a checkpoint (the latest, the given
  `step`, or with `best` the best validation epoch) and score the test splits."""
  workdir = os.path.abspath(workdir)
  directory = os.path.join(workdir, "checkpoints_best" if best else "checkpoints")
  if not os.path.isdir(directory):
    raise TrainingError(f"no checkpoint in {workdir} ({directory} does not exist); train first")
  name, data_dir = data.prepare_data(config)
  graphdef, abstract = state_lib.create_model_state(config)
  model, _, step = checkpointing.restore_checkpoint(directory, config, abstract, step,
                                                    source="the config")
  workdir_lib.echo(f"Evaluating checkpoint step {step} of {workdir}")
  writer = workdir_lib.MetricsWriter(workdir)
  try:
    return evaluate_splits(config, workdir, graphdef, model, name, data_dir,
                           config.dataset.test_splits, writer=writer, step=step)
  finally:
    writer.close()
