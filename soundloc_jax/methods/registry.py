"""Method registry: a method name -> how to compute its loss in the train step.

Contract for a registry entry (`Method`):
  * `loss(outputs, teacher_outputs, batch, method_config, rng) -> (loss, aux)`
    is traced inside the jitted train step. `outputs` / `teacher_outputs` are
    the model output dicts of `models.av_model` (the teacher's is None when
    the teacher is inactive, already under `stop_gradient` otherwise), `batch`
    the device batch dict, `aux` a dict of scalar diagnostics.
  * `needs_teacher`: the method uses the frozen previous-epoch model.
  * `needs_neighbours`: batches carry neighbour samples (HardPos): the
    trainer builds the neighbour table (`methods.neighbours.from_config`),
    batches hold `[B, 2, ...]` inputs plus `negative_mask` and
    `audio_neighbour_mask` (`input_pipeline.train_iterator`), the model runs
    on them flattened to `[2B, ...]` (`state.model_inputs`) and the loss gets
    those `[2B]` outputs. A method may need both (ICL x HardPos): the teacher
    then runs on the same flattened inputs, so its outputs are `[2B]` too.
  * `teacher_active(epoch, method_config)`: whether the teacher is used in
    that epoch (ICL's first `init_epochs` train with Eq. 3 only). The trainer
    compiles one step per distinct value, so this is a static choice.
  * `teacher_guard(val_metrics, val_audio, method_config) -> (ready, report)`
    (None: no guard): whether the model that is about to become the teacher
    is good enough to give pseudo-labels, judged at an epoch end on the
    validation split's metrics and audio embeddings `[N, d]`. With a guard the
    teacher starts at the first epoch `e` with `teacher_active(e, cfg)` whose
    preceding validation said ready (`TeacherSchedule`), not at a fixed epoch.
  * `check_config(method_config)`: called before anything runs; raises a
    ConfigError naming the bad `config.method.<key>` (instead of a ValueError
    at the first step).
A method reads its fields from `config.method`, where `configs/default.py`
declares every method's fields with their defaults. Each method module
(`methods/icl.py`, ...) registers its entries with `register(Method(...))`
when imported; `soundloc_jax.methods` imports them all, and `get(name)` looks
one up.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from soundloc_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  loss: Callable[..., Any]
  needs_teacher: bool = False
  needs_neighbours: bool = False
  teacher_active: Callable[[int, Any], bool] = lambda epoch, cfg: False
  teacher_guard: Callable[[dict, Any, Any], tuple[bool, str]] | None = None
  check_config: Callable[[Any], None] = lambda cfg: None


@dataclasses.dataclass
class TeacherSchedule:
  """Which epochs use a method's frozen teacher: those where `teacher_active`
  says so, from `started_at` on when the method has a guard. `started_at` is
  the epoch after the first validation whose guard said ready (None: not
  yet); the trainer keeps it in each checkpoint's meta (`meta()`), so a
  resumed run makes the same choice."""
  method: Method
  cfg: Any
  started_at: int | None = None

  @classmethod
  def from_meta(cls, method: Method, cfg, meta: dict) -> "TeacherSchedule":
    """The schedule of a run resumed with checkpoint `meta` ({} for a fresh
    run). A checkpoint from before the guard existed started at `init_epochs`,
    and so does a fresh run with the guard off (`cfg.teacher_guard=False`), at
    epoch 0 too when `init_epochs` is 0: its first teacher is the model it
    starts from (e.g. `model.init_from`)."""
    guard_off = method.teacher_guard is not None and not cfg.get("teacher_guard", True)
    started = meta.get("teacher_from_epoch",
                       cfg.get("init_epochs", 0) if meta or guard_off else -1)
    return cls(method, cfg, None if started is None or started < 0 else int(started))

  def active(self, epoch: int) -> bool:
    if not self.method.teacher_active(epoch, self.cfg):
      return False
    return self.method.teacher_guard is None or (self.started_at is not None
                                                 and epoch >= self.started_at)

  def after_validation(self, epoch: int, metrics: dict, audio) -> tuple[str, str] | None:
    """At the end of `epoch`, after validating the model that becomes the
    teacher: start the teacher for the next epoch if it is due and the guard
    says ready. Returns `(level, line)` to log ("info" when the teacher
    starts, "warning" while the guard holds it back or, once started, when
    the guard would fail again), or None."""
    if self.method.teacher_guard is None or not self.method.teacher_active(epoch + 1, self.cfg):
      return None
    ready, report = self.method.teacher_guard(metrics, audio, self.cfg)
    if self.started_at is None and ready:
      self.started_at = epoch + 1
      return "info", f"teacher starts at epoch {epoch + 1}: {report}"
    if self.started_at is None:
      return "warning", f"teacher held back after epoch {epoch} (Eq. 3 goes on): {report}"
    return None if ready else ("warning", f"the teacher would fail its guard now: {report}")

  def meta(self) -> dict:
    return {"teacher_from_epoch": -1 if self.started_at is None else self.started_at}


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
  if method.name in _REGISTRY:
    raise ValueError(f"method {method.name!r} is already registered")
  _REGISTRY[method.name] = method
  return method


def get(name: str) -> Method:
  if name not in _REGISTRY:
    raise ConfigError(f"unknown method {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name]


def names() -> list[str]:
  return sorted(_REGISTRY)
