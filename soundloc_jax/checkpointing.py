"""Checkpoints: a thin wrapper over orbax's CheckpointManager.

One checkpoint holds the whole train state pytree (student params and batch
statistics, teacher copy, optimizer state, step, RNG key data) plus a small
JSON record (`meta`: epoch, data position, the metric values at that step).
The data position is the step itself (see `input_pipeline`), so restoring
the state restores the input stream exactly.

Orbax writes each step into a temporary folder and renames it when complete,
so a crash mid-write leaves no checkpoint that `latest_step` would pick up
(a `<step>.orbax-checkpoint-tmp-*` folder, ignored). A folder damaged by hand
or by a disk fault IS listed; `inference.restore_checkpoint` (the one restore
path) names it, and resuming (`train.restore_latest_readable`) moves it aside.
Saves are asynchronous; `wait()` before reading them back or exiting.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, meta: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, step: int, abstract_state):
    """State with the structure, shapes, dtypes and shardings of `abstract_state`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                      meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

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
