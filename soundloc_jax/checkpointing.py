"""Checkpoints: orbax saves, the one restore path (with a diagnosis of what does
not fit), unreadable steps, and the best epoch by a validation metric.

A checkpoint (step folder `N` of a `Checkpointer`'s directory) holds three
orbax items:
  `state`  the student model's state, `params` and `batch_stats`
           (`MODEL_KEYS`): all inference needs, restored without an optimizer
  `train`  the rest of the train state (`state.py`: step, optimizer state,
           teacher copy, RNG key data, non-finite counters)
  `meta`   JSON: epoch, whether it completed, the validation metrics then
Checkpoints written before the model had its own item (one `state` item with
the whole train state) are read as well. The data position is the step
itself (see `input_pipeline`), so restoring the state restores the input
stream exactly.

Orbax writes each step into a temporary folder and renames it when complete,
so a crash mid-write leaves no checkpoint that `latest_step` would pick up
(a `<step>.orbax-checkpoint-tmp-*` folder, ignored). A folder damaged by hand
or by a disk fault IS listed: `restore_checkpoint` (the one restore path of
`load`, `--mode=eval` and resuming) names it, and `restore_latest_readable`
(resuming) moves it aside to `<step>.corrupt` and uses the previous one.
Saves are asynchronous; `wait()` before reading them back or exiting.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping

import jax
import orbax.checkpoint as ocp
from absl import logging

from soundloc_jax.errors import CheckpointMismatchError, CorruptCheckpointError, WorkdirError

MODEL_KEYS = ("params", "batch_stats")


class Checkpointer:
  """An orbax CheckpointManager over `directory`, keeping the last `max_to_keep`."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("state", "train", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, meta: dict) -> None:
    """Saves the train state `state` (the model item and the rest apart)."""
    model = {k: state[k] for k in MODEL_KEYS}
    rest = {k: v for k, v in state.items() if k not in MODEL_KEYS}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(model), train=ocp.args.StandardSave(rest),
        meta=ocp.args.JsonSave(meta)), force=True)

  def _has_model_item(self, step: int) -> bool:
    return os.path.isdir(os.path.join(self.directory, str(step), "train"))

  def restore(self, step: int, abstract_state):
    """`(state, meta)` with the structure, shapes, dtypes and shardings of
    `abstract_state`: the whole train state, or with just `MODEL_KEYS` the
    student model alone (no optimizer, teacher or step needed)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, dict(abstract_state))
    model = {k: abstract[k] for k in MODEL_KEYS}
    rest = {k: v for k, v in abstract.items() if k not in MODEL_KEYS}
    if self._has_model_item(step):
      items = {"state": ocp.args.StandardRestore(model)}
      if rest:
        items["train"] = ocp.args.StandardRestore(rest)
    elif rest:  # written before the model had its own item: one tree
      items = {"state": ocp.args.StandardRestore(abstract)}
    else:
      items = {"state": ocp.args.PyTreeRestore(
          model, restore_args=ocp.checkpoint_utils.construct_restore_args(model),
          partial_restore=True)}
    restored = self.manager.restore(step, args=ocp.args.Composite(
        **items, meta=ocp.args.JsonRestore()))
    state = {**restored["state"], **(restored["train"] if "train" in items else {})}
    return state, restored["meta"]

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def reload(self) -> None:
    """Forget the cached step list (after step folders were moved by hand or by us)."""
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


# ----------------------------------------------------------------------------
# Restore with diagnosis
# ----------------------------------------------------------------------------

def _tree_shapes(tree, prefix="") -> dict:
  """`{dotted path: shape}` over nested dicts / sequences / namedtuples / orbax metadata."""
  out = {}
  if hasattr(tree, "shape") and not isinstance(tree, (Mapping, list, tuple)):
    out[prefix] = tuple(tree.shape)
    return out
  if hasattr(tree, "_fields"):
    items = [(f, getattr(tree, f)) for f in tree._fields]
  elif isinstance(tree, (list, tuple)):
    items = list(enumerate(tree))
  elif hasattr(tree, "keys"):
    items = [(k, tree[k]) for k in tree.keys()]
  else:
    out[prefix] = None
    return out
  for k, v in items:
    out.update(_tree_shapes(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def _field_for(path: str) -> str:
  if path.startswith("opt_state"):
    return ("optimizer.name / optimizer.schedule / optimizer.warmup_steps / "
            "optimizer.grad_clip_norm (the optimizer state differs)")
  if path.startswith(("params", "batch_stats", "teacher")):
    return "model.width"
  return "the training config"


def _stored_shapes(step_dir: str, model_only: bool) -> dict:
  """`{dotted path: shape}` of what the checkpoint's items hold (their
  metadata only, no arrays are read)."""
  from etils import epath
  stored = {}
  for item in ("state",) if model_only else ("state", "train"):
    if item == "train" and not os.path.isdir(os.path.join(step_dir, item)):
      continue  # written before the model had its own item (a missing `state` raises)
    handler = ocp.StandardCheckpointHandler()
    try:
      meta = handler.metadata(epath.Path(os.path.join(step_dir, item)))
    finally:
      handler.close()
    stored.update(_tree_shapes(getattr(meta, "item_metadata", meta)))
  if model_only:  # a checkpoint from before the model item: the train entries too
    stored = {k: v for k, v in stored.items() if k.split(".")[0] in MODEL_KEYS}
  return {k: v for k, v in stored.items() if v is not None}


def _diagnose_mismatch(step_dir: str, abstract_state, config, structure: bool = True,
                       source: str = "config.json") -> str | None:
  """A sentence naming what differs between the checkpoint and `source` (the
  config's name in the message), or None.

  Shapes are compared always; with `structure`, entries present on one side
  only as well (used once a restore has failed: empty optimizer states show
  up on one side only, so structure alone cannot prove a mismatch)."""
  model_only = set(abstract_state) == set(MODEL_KEYS)
  stored = _stored_shapes(step_dir, model_only)
  wanted = {k: v for k, v in _tree_shapes(abstract_state).items() if v is not None}
  conv1 = stored.get("params.visual.conv1.kernel")
  width = conv1[-1] if conv1 else None
  if width is not None and width != config.model.width:
    return (f"the checkpoint was trained with model.width={width}, but {source} "
            f"says model.width={config.model.width}")
  checks = [("shape differs", sorted(k for k in set(wanted) & set(stored)
                                     if wanted[k] != stored[k]))]
  if structure:
    checks += [("missing from the checkpoint", sorted(set(wanted) - set(stored))),
               ("not in the model", sorted(set(stored) - set(wanted)))]
  for label, paths in checks:
    if paths:
      first = paths[0]
      detail = (f" (checkpoint {stored[first]}, model {wanted[first]})"
                if label == "shape differs" else "")
      return (f"{len(paths)} entr{'y' if len(paths) == 1 else 'ies'} {label}, e.g. {first}"
              f"{detail}; check {source}'s {_field_for(first)}")
  return None


def restore_checkpoint(ckpt_dir: str, config, abstract_state, step: int | None = None,
                       source: str = "config.json"):
  """`(state, meta, step)`: checkpoint `step` (the latest by default) of `ckpt_dir`
  restored into `abstract_state`: the train state `config` builds, or just its
  `MODEL_KEYS` (the student, for inference and evaluation); `source` names
  that config in messages. The one restore path of `load`, `--mode=eval` and
  resuming, so a mismatch reads the same everywhere: `CheckpointMismatchError`
  when the checkpoint is of another model (what differs is named),
  `CorruptCheckpointError` when it cannot be read although its structure
  fits, `WorkdirError` when there is no such step."""
  ckpt = Checkpointer(ckpt_dir)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise WorkdirError(f"no checkpoint in {ckpt_dir}; train first, or point --workdir "
                         "at a trained run")
    if step is None:
      step = ckpt.latest_step()
    elif int(step) not in steps:
      raise WorkdirError(f"no checkpoint step {step} in {ckpt_dir}; available steps: "
                         f"{', '.join(str(s) for s in sorted(steps))}")
    step = int(step)
    step_dir = os.path.join(ckpt_dir, str(step))
    what = f"checkpoint step {step} in {ckpt_dir}"
    # Shapes are checked against the checkpoint's metadata first: a restore
    # with wrong shapes fails in orbax's async readers, which then log every
    # failed array to stderr.
    try:
      why = _diagnose_mismatch(step_dir, abstract_state, config, structure=False,
                               source=source)
    except Exception:  # best effort; the restore below still checks everything
      why = None
    if why:
      raise CheckpointMismatchError(f"{what} does not fit the model described by {source}: "
                                    f"{why}")
    failure = None
    try:
      state, meta = ckpt.restore(step, abstract_state)
    except Exception as e:  # orbax raises ValueError and others on a mismatch
      # Only the text is kept: the exception's frames hold orbax's async
      # machinery, which complains if it is finalised after its event loop.
      text = str(e).strip()
      failure = f"{type(e).__name__}: {text.splitlines()[0][:300] if text else 'no details'}"
    if failure is not None:
      try:
        why = _diagnose_mismatch(step_dir, abstract_state, config, source=source)
      except Exception:  # unreadable metadata: the checkpoint itself is damaged
        why = None
      if why:
        raise CheckpointMismatchError(f"{what} does not fit the model described by {source}: "
                                      f"{why} (restore said: {failure})")
      raise CorruptCheckpointError(
          f"{what} cannot be read ({failure}): it is incomplete or corrupted (or written by "
          f"another version); use an earlier step (available: "
          f"{', '.join(str(s) for s in sorted(steps))}) or delete that folder")
  finally:
    ckpt.close()
  return state, meta, step


def restore_latest_readable(ckpt: Checkpointer, config, abstract_state, warn=logging.warning):
  """`(state, meta, step)` of the latest checkpoint that can be read (step None:
  none, `abstract_state` returned). A kill -9 cannot leave a listed but
  unreadable checkpoint (orbax renames a step folder into place once written),
  but a disk fault or a hand edit can: such a folder is moved aside to
  `<step>.corrupt` (kept for inspection, ignored by orbax), `warn` says so, and
  the previous one is used. A checkpoint of another model is an error."""
  while (step := ckpt.latest_step()) is not None:
    try:
      return restore_checkpoint(ckpt.directory, config, abstract_state, step,
                                source="the config")
    except CorruptCheckpointError as e:
      src = os.path.join(ckpt.directory, str(step))
      aside, n = f"{src}.corrupt", 1
      while os.path.exists(aside):
        aside, n = f"{src}.corrupt{n}", n + 1
      # FileNotFoundError: another process of a multi-host run moved it already.
      with contextlib.suppress(FileNotFoundError):
        os.rename(src, aside)
      warn(f"{e}; moved it to {aside} and trying the previous checkpoint")
      ckpt.reload()
  warn(f"no readable checkpoint left in {ckpt.directory}; starting from step 0")
  return abstract_state, {}, None


class BestCheckpoint:
  """The best validated epoch by `metric` (max), kept in `directory` apart from
  the last N: `update` saves a checkpoint whose metric beats every earlier one
  (including those of a run this one resumes)."""

  def __init__(self, directory: str, metric: str, warn=logging.warning):
    self.metric = metric
    self.ckpt = Checkpointer(directory, max_to_keep=1)
    self.value = -math.inf
    if self.ckpt.latest_step() is not None:
      try:
        self.value = self.ckpt.restore_meta(self.ckpt.latest_step()).get(metric, -math.inf)
      except Exception as e:  # damaged by hand or a disk fault: the next epoch replaces it
        warn(f"best checkpoint in {self.ckpt.directory} is unreadable ({type(e).__name__}); "
             "the next validated epoch replaces it")

  def update(self, step: int, state, meta: dict) -> None:
    """Saves `state` if `meta[metric]` is the best so far. Finished before the
    step's regular checkpoint starts: a kill in between resumes before this
    epoch end, which then redoes the comparison."""
    if meta.get(self.metric, -math.inf) > self.value:
      self.value = meta[self.metric]
      self.ckpt.save(step, state, meta)
      self.ckpt.wait()

  def close(self) -> None:
    self.ckpt.close()
