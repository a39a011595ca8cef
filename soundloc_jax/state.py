"""The train state, the optimizer, and the model's jitted forward passes.

Train state (a plain dict pytree, replicated over the mesh, donated to the step):
  `step`                 int32 scalar, global steps done
  `params`, `batch_stats` the student (pure `nnx.State`s; `checkpointing.MODEL_KEYS`,
                         saved as their own checkpoint item, so inference
                         restores them without an optimizer: `create_model_state`)
  `opt_state`            optax state of the student params
  `teacher_params`, `teacher_batch_stats`
                         the frozen copy of the student taken at the end of
                         the previous epoch (ICL's pseudo-label model); the
                         step runs it in eval mode under `stop_gradient` and
                         returns it untouched
  `rng`                  uint32 key data; step randomness is fold_in(rng, step)
  `nonfinite_step`       the first step whose loss or gradients were not
                         finite (-1: none yet)
  `skipped_steps`        how many updates `nonfinite="skip"` dropped

Optimizer (`make_optimizer`): `config.optimizer.name` picks an entry of
`OPTIMIZERS`; its learning rate follows `learning_rate_schedule` (a linear
warmup from 0 over `warmup_steps`, then `SCHEDULES[schedule]`); with
`grad_clip_norm` > 0 the global gradient norm is clipped first; with
`pretrained_lr_scale` != 1 the updates of the weights `init_visual` loads
(the backbone's `pretrained` path) are scaled by it, i.e. their learning
rate (Adam's update is linear in the rate). The default
(constant rate, no warmup) passes the rate as a number, as before schedules
existed, so its optimizer state and checkpoints are unchanged.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import optax
from absl import logging
from flax import nnx

from soundloc_jax import audio, checkpointing, input_pipeline, workdir
from soundloc_jax.errors import ConfigError
from soundloc_jax.models import av_model

# name -> (learning rate or schedule, config.optimizer) -> optax transformation.
OPTIMIZERS = {
    "adam": lambda lr, oc: optax.adam(lr),
    "adamw": lambda lr, oc: optax.adamw(lr, weight_decay=oc.weight_decay),
    "sgd": lambda lr, oc: optax.sgd(lr, momentum=0.9),
}
# name -> (peak rate, steps after the warmup) -> schedule over those steps.
SCHEDULES = {
    "constant": lambda peak, steps: optax.constant_schedule(peak),
    # Cosine from the peak to 0, which it reaches when the last step is done.
    "cosine": lambda peak, steps: optax.cosine_decay_schedule(peak, decay_steps=max(steps, 1)),
}


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
  """The learning rate at each step (0-based count of updates done) of a run of
  `total_steps` steps (`steps_per_epoch * num_epochs`)."""
  oc = config.optimizer
  if oc.schedule not in SCHEDULES:
    raise ConfigError(f"config.optimizer.schedule: unknown schedule {oc.schedule!r}; "
                      f"available: {', '.join(SCHEDULES)}")
  warmup = int(oc.warmup_steps)
  if warmup < 0:
    raise ConfigError(f"config.optimizer.warmup_steps must be >= 0, got {warmup}")
  after = SCHEDULES[oc.schedule](oc.learning_rate, total_steps - warmup)
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, oc.learning_rate, warmup), after],
                              [warmup])


def make_optimizer(config, total_steps: int = 0) -> optax.GradientTransformation:
  """The optimizer `config.optimizer` describes, for a run of `total_steps`
  steps (only the cosine schedule needs it; module docstring)."""
  oc = config.optimizer
  if oc.name not in OPTIMIZERS:
    raise ConfigError(f"config.optimizer.name: unknown optimizer {oc.name!r}; "
                      f"available: {', '.join(OPTIMIZERS)}")
  schedule = learning_rate_schedule(config, total_steps)
  constant = oc.schedule == "constant" and not oc.warmup_steps
  opt = OPTIMIZERS[oc.name](oc.learning_rate if constant else schedule, oc)
  if oc.grad_clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(oc.grad_clip_norm), opt)
  if oc.pretrained_lr_scale != 1.0:
    if oc.pretrained_lr_scale < 0:
      raise ConfigError("config.optimizer.pretrained_lr_scale must be >= 0, got "
                        f"{oc.pretrained_lr_scale}")
    prefix = av_model.get_visual_backbone(config.model.visual_backbone).pretrained
    opt = optax.chain(opt, optax.masked(optax.scale(oc.pretrained_lr_scale),
                                        lambda params: under_prefix(params, prefix)))
  return opt


def _key_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def under_prefix(params, prefix: tuple):
  """A pytree of bools like `params`: True for the leaves whose path starts with `prefix`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: tuple(_key_name(e) for e in path[:len(prefix)]) == tuple(prefix), params)


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def create_model_state(config, init_visual: str = ""):
  """`(graphdef, {"params", "batch_stats"})` of a freshly initialised student
  (`config.model`, seeded by `config.seed`; with `init_visual`, its visual
  stream loaded from that importer's directory, `tools.visual_weights`): the structure a
  checkpoint's model item is restored into."""
  model = av_model.build_model(config.model, seed=config.seed)
  if init_visual:
    from soundloc_jax.tools import visual_weights
    visual_weights.load_init_visual(model, config.model.visual_backbone, init_visual)
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return graphdef, {"params": nnx.as_pure(params), "batch_stats": nnx.as_pure(batch_stats)}


def create_train_state(config, optimizer, pretrained: bool = True, log=logging.info):
  """(graphdef, state) for a fresh run; the teacher starts as a copy of the student.

  With `config.model.init_visual` set (and `pretrained`), the visual stream
  starts from that importer's folder (`tools.visual_weights`); with
  `config.model.init_from`, both streams start from that workdir's latest
  checkpoint (`init_from_workdir`, which reports it with `log`). A caller
  that restores a checkpoint right after may pass `pretrained=False`, so
  neither need exist any more."""
  init_visual, init_from = config.model.init_visual, config.model.init_from
  if init_visual and init_from:
    raise ConfigError("config.model.init_visual and config.model.init_from are both set; "
                      "init_from already holds the visual stream's weights: set one")
  graphdef, model = create_model_state(config, init_visual if pretrained else "")
  if init_from and pretrained:
    model = init_from_workdir(config, init_from, log)
  state = {
      "step": jnp.zeros((), jnp.int32),
      **model,
      "opt_state": optimizer.init(model["params"]),
      "teacher_params": _copy(model["params"]),
      "teacher_batch_stats": _copy(model["batch_stats"]),
      "rng": jax.random.key_data(jax.random.key(config.seed)),
      "nonfinite_step": jnp.full((), -1, jnp.int32),
      "skipped_steps": jnp.zeros((), jnp.int32),
  }
  return graphdef, state


# Model fields that may differ between a run and the workdir it starts from
# (they do not change the shapes or the meaning of the weights).
_INIT_FROM_FREE = ("compute_dtype", "depthwise_impl", "cpu_ops", "init_visual", "init_from")


def init_from_workdir(config, source_workdir: str, log=logging.info) -> dict:
  """`{"params", "batch_stats"}` of the student in `source_workdir`'s latest
  checkpoint, for a fresh run of `config`; a ConfigError names what differs
  when that run's model or audio front end is not this one's."""
  source_workdir = os.path.abspath(os.path.expanduser(source_workdir))
  source = workdir.read_config(source_workdir)
  ours, theirs = config.model.to_dict(), source.model.to_dict()
  differ = sorted(k for k in set(ours) | set(theirs)
                  if k not in _INIT_FROM_FREE and ours.get(k) != theirs.get(k))
  differ = [f"model.{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differ]
  if audio.params_dict(source.audio) != audio.params_dict(config.audio):
    differ.append(f"audio: {audio.params_dict(source.audio)} there, "
                  f"{audio.params_dict(config.audio)} here")
  if differ:
    raise ConfigError(f"config.model.init_from={source_workdir!r} was trained with another "
                      "model: " + "; ".join(differ))
  _, abstract = create_model_state(source)
  model, _, step = checkpointing.restore_checkpoint(
      os.path.join(source_workdir, "checkpoints"), source, abstract,
      source=os.path.join(source_workdir, "config.json"))
  log(f"Starting from the weights of {source_workdir} (checkpoint step {step})")
  return model


def refresh_teacher(state):
  """Epoch end: the teacher becomes a frozen copy (fresh buffers) of the student."""
  return dict(state, teacher_params=_copy(state["params"]),
              teacher_batch_stats=_copy(state["batch_stats"]))


def teacher_outputs(graphdef, state, inputs):
  """The frozen teacher's outputs on `inputs` (`model_inputs`): the model of
  `state["teacher_params"]` / `state["teacher_batch_stats"]` in eval mode
  (running BatchNorm statistics), no gradient through it."""
  teacher = nnx.merge(graphdef, state["teacher_params"], state["teacher_batch_stats"])
  teacher.eval()
  return jax.lax.stop_gradient(teacher(*inputs))


def model_inputs(batch, needs_neighbours: bool):
  """`(image, spectrogram)` for the model, after the device half of the
  training transform (`input_pipeline.device_inputs`: JPEG colour
  conversion, flip, float32 spectrograms). Neighbour batches hold `[B, 2, ...]` (base, neighbour;
  `input_pipeline.train_iterator`): flattened to `[2B, ...]` (row-major, so
  each device's rows stay its own) for one forward over all, BatchNorm
  statistics included; the method's loss reshapes the outputs back."""
  image, spectrogram = input_pipeline.device_inputs(batch)
  if needs_neighbours:
    image = image.reshape((-1,) + image.shape[2:])
    spectrogram = spectrogram.reshape((-1,) + spectrogram.shape[2:])
  return image, spectrogram


# What a predict function returns from the model's output dict.
PREDICT_OUTPUTS = {
    "response": lambda out: out["response"],
    "all": lambda out: out,
    # HardPos mining (Eq. 4): the audio embedding and the spatial mean of the
    # (per-patch L2-normalised) visual map, re-normalised by the miner.
    "embeddings": lambda out: (out["audio_embedding"], jnp.mean(out["visual_features"],
                                                                 axis=(1, 2))),
}


def make_predict_fn(graphdef, outputs: str = "response"):
  """Jitted eval-mode forward `(params, batch_stats, image, spectrogram) -> ...`:
  the `[B, h, w]` response, the whole output dict (`outputs="all"`, which
  retrieval scoring needs) or the mining embeddings (`"embeddings"`)."""
  select = PREDICT_OUTPUTS[outputs]

  @jax.jit
  def predict(params, batch_stats, image, spectrogram):
    model = nnx.merge(graphdef, params, batch_stats)
    model.eval()
    return select(model(image, spectrogram))

  return predict
