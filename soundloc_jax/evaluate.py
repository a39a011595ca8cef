"""Scoring a trained student on the test splits: at the end of training and
with `--mode=eval` (`evaluate_checkpoint`, which restores the checkpoint's
model item alone). Each entry of `config.dataset.test_splits` is scored with
the evaluators of `config.evals.test` (`evaluation.evaluators`) and gets a
report in `workdir/eval/<entry>/` (`evaluation.plots.write_report`).
"""

from __future__ import annotations

import os

from soundloc_jax import checkpointing, data, distributed
from soundloc_jax import state as state_lib
from soundloc_jax import workdir as workdir_lib
from soundloc_jax.errors import TrainingError
from soundloc_jax.evaluation import evaluators, plots


def evaluate_splits(config, workdir, graphdef, state, name, data_dir, splits,
                    predict=None) -> dict:
  """Score `splits` with the state's student (the evaluators of
  `config.evals.test`); reports in `workdir/eval/<entry>/`.

  An entry is a split of the training dataset (`"test"`) or of another one
  (`"other_dataset:test"`, e.g. train on VGGSound, test on Flickr too).
  """
  predict = predict or state_lib.make_predict_fn(graphdef, outputs="all")
  out = {}
  for entry in splits:
    split_name, split = name, entry
    if ":" in entry:
      other, split = entry.rsplit(":", 1)
      split_name = data.resolve_dataset(other, data_dir, config.dataset.build_if_missing)
    source = data.open_source(split_name, split, data_dir)
    res = evaluators.SplitEvaluator(entry, source, config, config.evals.test).run(
        lambda im, sp: predict(state["params"], state["batch_stats"], im, sp))
    report_dir = os.path.join(workdir, "eval", entry.replace("/", "_").replace(":", "_"))
    if distributed.is_primary():
      plots.write_report(res, report_dir, source, config)
    workdir_lib.echo(f"{entry}: {res.describe(config.eval.success_threshold)}; "
                     f"report in {report_dir}")
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
  return evaluate_splits(config, workdir, graphdef, model, name, data_dir,
                         config.dataset.test_splits)
