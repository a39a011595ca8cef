"""Method registry: a method name -> how to compute its loss in the train step.

Contract for a registry entry (`Method`):
  * `loss(outputs, teacher_outputs, batch, method_config, rng) -> (loss, aux)`
    is traced inside the jitted train step. `outputs` / `teacher_outputs` are
    the model output dicts of `models.av_model` (the teacher's is None when
    the teacher is inactive, already under `stop_gradient` otherwise), `batch`
    the device batch dict, `aux` a dict of scalar diagnostics.
  * `needs_teacher`: the method uses the frozen previous-epoch model.
  * `needs_neighbours`: batches carry neighbour samples (HardPos): the
    trainer builds the neighbour table (`neighbours.from_config`), batches
    hold `[B, 2, ...]` inputs plus `negative_mask` (`input_pipeline.
    train_iterator`), the model runs on them flattened to `[2B, ...]`
    (`train.model_inputs`) and the loss gets those `[2B]` outputs.
  * `teacher_active(epoch, method_config)`: whether the teacher is used in
    that epoch (ICL's first `init_epochs` train with Eq. 3 only). The trainer
    compiles one step per distinct value, so this is a static choice.
Register a new method with `register(Method(...))`; `get(name)` looks it up.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from soundloc_jax import ezvsl_losses, hardpos_losses, losses, lvs_losses
from soundloc_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  loss: Callable[..., Any]
  needs_teacher: bool = False
  needs_neighbours: bool = False
  teacher_active: Callable[[int, Any], bool] = lambda epoch, cfg: False
  # Called with config.method before anything runs; raises ConfigError naming
  # the bad `config.method.<key>` (instead of a ValueError at the first step).
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


def _contrastive_loss(outputs, teacher_outputs, batch, cfg, rng):
  del teacher_outputs, batch, rng
  tau = cfg.get("tau", 0.07)
  return losses.contrastive_loss(outputs["visual_features"], outputs["audio_embedding"], tau), {}


def _icl_loss(outputs, teacher_outputs, batch, cfg, rng):
  if teacher_outputs is None:  # initialisation epochs: Eq. 3
    return _contrastive_loss(outputs, None, batch, cfg, rng)
  return losses.icl_loss(
      outputs["visual_features"], outputs["audio_embedding"],
      teacher_outputs["response"], teacher_outputs["audio_embedding"],
      tau=cfg.tau, delta_v=cfg.delta_v, delta_a=cfg.delta_a, use_itr=cfg.use_itr,
      use_intra=cfg.use_intra, use_inter=cfg.use_inter,
      sample_fraction=cfg.sample_fraction, rng=rng)


def _icl_teacher_active(epoch, cfg):
  uses_pseudo_labels = cfg.use_itr or cfg.use_intra or cfg.use_inter
  return bool(uses_pseudo_labels and epoch >= cfg.init_epochs)


register(Method("contrastive", _contrastive_loss))
register(Method("icl", _icl_loss, needs_teacher=True, teacher_active=_icl_teacher_active))


# LVS baseline (soundloc_jax.lvs_losses): "lvs" = tri-map + hard-negative logit,
# "lvs_vanilla" = neither (HardPos's Vanilla-LVS, the model it mines with).
def _make_lvs_loss(trimap, hard_negative):
  def loss(outputs, teacher_outputs, batch, cfg, rng):
    del teacher_outputs, batch, rng
    return lvs_losses.lvs_loss(
        outputs["visual_features"], outputs["audio_embedding"], epsilon=cfg.epsilon,
        epsilon2=cfg.epsilon2, mask_tau=cfg.mask_tau, temperature=cfg.temperature,
        trimap=trimap, hard_negative=hard_negative,
        negative_pooling=cfg.get("negative_pooling", "masked"))
  return loss


def _check_negative_pooling(cfg):
  pooling = cfg.get("negative_pooling", "masked")
  if pooling not in lvs_losses.NEGATIVE_POOLINGS:
    raise ConfigError(f"config.method.negative_pooling={pooling!r} is not one of "
                      f"{lvs_losses.NEGATIVE_POOLINGS}")


register(Method("lvs", _make_lvs_loss(trimap=True, hard_negative=True),
                check_config=_check_negative_pooling))
register(Method("lvs_vanilla", _make_lvs_loss(trimap=False, hard_negative=False),
                check_config=_check_negative_pooling))


# EZ-VSL (soundloc_jax.ezvsl_losses): max over patches, InfoNCE both ways.
def _ezvsl_loss(outputs, teacher_outputs, batch, cfg, rng):
  del teacher_outputs, batch, rng
  return ezvsl_losses.ezvsl_loss(outputs["visual_features"], outputs["audio_embedding"],
                                 temperature=cfg.temperature)


register(Method("ezvsl", _ezvsl_loss))


# HardPos (soundloc_jax.hardpos_losses): batches carry one audio and one visual
# neighbour per row (`input_pipeline.train_iterator(neighbours=...)`); the
# model ran on the flattened [2B] inputs (`train.model_inputs`), reshaped here.
def _hardpos_loss(outputs, teacher_outputs, batch, cfg, rng):
  del teacher_outputs, rng
  visual, audio = outputs["visual_features"], outputs["audio_embedding"]
  visual = visual.reshape((-1, 2) + visual.shape[1:])
  audio = audio.reshape((-1, 2) + audio.shape[1:])
  return hardpos_losses.hardpos_loss(visual, audio, batch["negative_mask"], epsilon=cfg.epsilon,
                                     mask_tau=cfg.mask_tau, temperature=cfg.temperature,
                                     negative_pooling=cfg.get("negative_pooling", "masked"),
                                     positives=cfg.get("positives", "bavc"),
                                     neighbour_gradient=cfg.get("neighbour_gradient", True),
                                     negative_anchor=cfg.get("negative_anchor", "audio"))


def _check_hardpos_config(cfg):
  try:
    hardpos_losses.positive_columns(cfg.get("positives", "bavc"))
  except ValueError as e:
    raise ConfigError(f"config.method.positives: {e}") from None
  anchor = cfg.get("negative_anchor", "audio")
  if anchor not in hardpos_losses.NEGATIVE_ANCHORS:
    raise ConfigError(f"config.method.negative_anchor={anchor!r} is not one of "
                      f"{hardpos_losses.NEGATIVE_ANCHORS}")
  _check_negative_pooling(cfg)


register(Method("hardpos", _hardpos_loss, needs_neighbours=True,
                check_config=_check_hardpos_config))
