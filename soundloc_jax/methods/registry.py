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
    batches hold `[B, 2, ...]` inputs plus `negative_mask` (`input_pipeline.
    train_iterator`), the model runs on them flattened to `[2B, ...]`
    (`state.model_inputs`) and the loss gets those `[2B]` outputs.
  * `teacher_active(epoch, method_config)`: whether the teacher is used in
    that epoch (ICL's first `init_epochs` train with Eq. 3 only). The trainer
    compiles one step per distinct value, so this is a static choice.
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
  check_config: Callable[[Any], None] = lambda cfg: None


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
