"""The training loop: one jitted step, epoch-end teacher refresh, validation, checkpoints.

Epoch `e` covers steps `[e * steps_per_epoch, (e + 1) * steps_per_epoch)`, with
`steps_per_epoch = N // global_batch` (`input_pipeline.EpochSampler`); after
its last step the teacher becomes a copy (new buffers: the student's are
donated) of the student, the validation split is scored by the evaluators of
`config.evals.validation` and a checkpoint is written. Rerunning the same
command resumes from the last complete checkpoint, and since the input stream
is a pure function of the step the resumed run equals an uninterrupted one.
A run of 0 steps (`num_epochs=0`) saves the untrained model as step 0, so it
loads and scores like any run.

The pieces live next door: the train state, optimizer and forward passes in
`state`, the workdir's records and metrics writer in `workdir`, datasets and
batches in `data`, checkpoints (restore, unreadable steps, best epoch) in
`checkpointing`, scoring in `evaluation.evaluators`, the test splits' scoring
(also `--mode=eval`) in `evaluate`.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from soundloc_jax import checkpointing, data, distributed, evaluate, input_pipeline, methods
from soundloc_jax import state as state_lib
from soundloc_jax import workdir as workdir_lib
from soundloc_jax.errors import ConfigError, TrainingError
from soundloc_jax.evaluation import evaluators, plots


def make_train_step(graphdef, method: methods.Method, method_config, optimizer,
                    teacher_active: bool, mesh=None, skip_nonfinite: bool = False):
  """Jitted `(state, batch) -> (state, metrics)`; state donated, batch sharded on 'data'.

  A step whose loss or gradients are not finite is recorded in
  `state["nonfinite_step"]` (the first one); with `skip_nonfinite` its update
  is dropped (params, optimizer and BatchNorm state stay as they were).
  """

  def step_fn(state, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    inputs = state_lib.model_inputs(batch, method.needs_neighbours)
    teacher_outputs = (state_lib.teacher_outputs(graphdef, state, inputs)
                       if teacher_active else None)

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state["batch_stats"])
      model.train()
      loss, aux = method.loss(model(*inputs), teacher_outputs, batch, method_config, rng)
      return loss, (aux, nnx.as_pure(nnx.state(model, nnx.BatchStat)))

    (loss, (aux, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    step = state["step"] + 1
    nonfinite_step = jnp.where((state["nonfinite_step"] < 0) & ~finite, step,
                               state["nonfinite_step"])
    skipped = state["skipped_steps"]
    if skip_nonfinite:
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      params = keep(params, state["params"])
      opt_state = keep(opt_state, state["opt_state"])
      batch_stats = keep(batch_stats, state["batch_stats"])
      skipped = skipped + (~finite).astype(jnp.int32)
    metrics = {"loss": loss, "grad_norm": grad_norm, **aux}
    new_state = dict(state, step=step, params=params, batch_stats=batch_stats,
                     opt_state=opt_state, nonfinite_step=nonfinite_step, skipped_steps=skipped)
    return new_state, metrics

  if mesh is None:
    return jax.jit(step_fn, donate_argnums=(0,))
  replicated = NamedSharding(mesh, P())
  sharded = NamedSharding(mesh, P("data"))
  return jax.jit(step_fn, donate_argnums=(0,), in_shardings=(replicated, sharded),
                 out_shardings=(replicated, replicated))


def itstime(step: int, every: int, last: bool = False) -> bool:
  """Whether a periodic action is due after `step` (big_vision's `itstime`):
  every `every` steps (0: never), and at the last step when `last`."""
  return last or (every > 0 and step % every == 0)


def train_and_evaluate(config, workdir: str) -> dict:
  """Train per `config` in `workdir` (resuming if it holds a checkpoint); returns
  the final validation metrics (and test metrics when training completed)."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  method = methods.get(config.method.name)
  method.check_config(config.method)
  name, data_dir = data.prepare_data(config)
  ds_cfg = config.dataset
  train_source = data.open_source(name, ds_cfg.train_split, data_dir, encoded_images=True)
  val_source = data.open_source(name, ds_cfg.validation_split, data_dir)
  data.check_audio_matches(name, data_dir, config)
  val_eval = evaluators.SplitEvaluator(ds_cfg.validation_split, val_source, config,
                                       config.evals.validation)
  val_eval.check_metric(config.checkpoint.best_metric, "config.checkpoint.best_metric",
                        prefix="val_", dataset=name)
  if (method.teacher_guard is not None and config.method.teacher_guard
      and not any(e.name == "retrieval" for e in val_eval.evaluators)):
    raise ConfigError("config.method.teacher_guard needs validation retrieval: add 'retrieval' "
                      "to config.evals.validation, or set config.method.teacher_guard=False")
  # Auto axis: XLA propagates shardings (the loss's all-pairs logits need a
  # gathered batch), we only pin the inputs and the state.
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  if config.batch_size % jax.device_count():
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by the "
                      f"{jax.device_count()} devices")
  steps_per_epoch = input_pipeline.EpochSampler(len(train_source), config.batch_size,
                                                config.seed).steps_per_epoch
  total_steps = steps_per_epoch * config.num_epochs
  stop_step = min(total_steps, config.max_steps) if config.max_steps else total_steps
  optimizer = state_lib.make_optimizer(config, total_steps)
  schedule = state_lib.learning_rate_schedule(config, total_steps)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.checkpoint.max_to_keep)
  latest = ckpt.latest_step()
  # A resumed run restores every weight, so it does not need (or read) the
  # model.init_visual folder or the model.init_from workdir again.
  graphdef, state = state_lib.create_train_state(config, optimizer, pretrained=latest is None,
                                                 log=workdir_lib.echo)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  workdir_lib.check_and_record_config(config, workdir, has_checkpoint=latest is not None)
  workdir_lib.write_run_info(workdir, config, data.dataset_fingerprint(name, data_dir))
  meta = {}
  if latest is not None:
    state, meta = _resume(ckpt, config, state, optimizer, mesh, workdir)
  teacher = methods.TeacherSchedule.from_meta(method, config.method, meta)
  best = (checkpointing.BestCheckpoint(os.path.join(workdir, "checkpoints_best"),
                                       config.checkpoint.best_metric, warn=workdir_lib.warn)
          if config.checkpoint.best_metric else None)

  start_step = int(jax.device_get(state["step"]))
  # TensorBoard hides what an interrupted run logged after the checkpoint it resumes from.
  writer = workdir_lib.MetricsWriter(workdir, purge_step=start_step + 1)
  predict = state_lib.make_predict_fn(graphdef, outputs="all")
  overlay_ids = np.linspace(0, len(val_source) - 1, config.eval.num_overlays).astype(int)
  step_fns, last_metrics, skipped_reported = {}, {}, 0
  device_keys = (input_pipeline.NEIGHBOUR_DEVICE_KEYS if method.needs_neighbours
                 else input_pipeline.DEVICE_KEYS)
  if start_step < stop_step:
    workdir_lib.echo(f"Training {method.name} for {stop_step - start_step} steps "
                     f"({steps_per_epoch} steps/epoch, global batch {config.batch_size}, "
                     f"{jax.device_count()} device(s)); logs in {writer.path}")
    # Two batches on the device ahead of the step: host and device overlap.
    batches = distributed.prefetch_to_device(
        data.train_batches(config, train_source, start_step, stop_step,
                           method.needs_neighbours, warn=workdir_lib.warn),
        lambda b: distributed.global_batch(b, mesh, P("data"), keys=device_keys))
  t_start, t_log, samples_since_log = time.time(), time.time(), 0
  # A live bar on terminals only (disable=None); logs get the ETA in each line.
  bar = tqdm.tqdm(total=stop_step, initial=start_step, unit="step", disable=None,
                  dynamic_ncols=True, leave=False)

  def check_finite(n):
    nonlocal skipped_reported
    skipped = _check_finite(state, n, ckpt, config)
    if skipped > skipped_reported:
      workdir_lib.warn(f"{skipped} update(s) with non-finite loss or gradients skipped so far")
      skipped_reported = skipped

  def log_train(n, epoch, active, metrics):
    nonlocal t_log, samples_since_log
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    now = time.time()
    rate = samples_since_log / max(now - t_log, 1e-9)
    eta = (stop_step - n) * (now - t_start) / (n - start_step)
    lr = float(schedule(n - 1 - int(jax.device_get(state["skipped_steps"]))))
    writer.write({"step": n, "epoch": epoch, "split": "train", "samples_per_s": rate,
                  "teacher": active, **metrics, "learning_rate": lr},
                 f"step {n}/{stop_step} epoch {epoch} loss {metrics['loss']:.4f}"
                 f" {rate:.0f} samples/s ETA {workdir_lib.format_eta(eta)}")
    t_log, samples_since_log = now, 0

  def validate(n, epoch):
    t0 = time.time()
    res = val_eval.run(lambda im, sp: predict(state["params"], state["batch_stats"], im, sp))
    writer.write({"step": n, "epoch": epoch, "split": val_eval.name, **res.metrics},
                 f"epoch {epoch} {val_eval.name}: "
                 f"{res.describe(config.eval.success_threshold)} [{time.time() - t0:.1f}s]")
    note = teacher.after_validation(epoch, res.metrics, res.audio)
    if note:
      {"info": workdir_lib.echo, "warning": workdir_lib.warn}[note[0]](note[1])
    if distributed.is_primary():
      os.makedirs(os.path.join(workdir, "overlays"), exist_ok=True)
      path = os.path.join(workdir, "overlays", f"{val_eval.name}_epoch_{epoch:03d}.png")
      plots.save_overlays(res, overlay_ids, val_source, config, path)
      writer.image(val_eval.name, "overlays", path, n)
    return {f"val_{k}": float(v) for k, v in res.items()}

  def save(n, epoch, epoch_end):
    meta = {"step": n, "epoch": epoch, "epoch_complete": bool(epoch_end), **last_metrics,
            **teacher.meta()}
    if epoch_end and best is not None:
      best.update(n, state, meta)
    ckpt.save(n, state, meta)

  for step in range(start_step, stop_step):
    epoch, n = step // steps_per_epoch, step + 1
    active = teacher.active(epoch)
    if active not in step_fns:
      step_fns[active] = make_train_step(graphdef, method, config.method, optimizer, active, mesh,
                                         skip_nonfinite=config.nonfinite == "skip")
    state, metrics = step_fns[active](state, next(batches))
    samples_since_log += config.batch_size
    bar.update(1)
    last, epoch_end = n == stop_step, n % steps_per_epoch == 0
    log_now = itstime(n, config.log_every_steps, last)
    save_now = epoch_end or itstime(n, config.checkpoint.every_steps, last)
    if log_now or save_now:  # before anything is logged, evaluated or saved
      check_finite(n)
    if log_now:
      log_train(n, epoch, active, metrics)
    if epoch_end and method.needs_teacher:
      state = state_lib.refresh_teacher(state)
    if epoch_end and itstime(epoch + 1, config.eval.every_epochs, last):
      last_metrics = validate(n, epoch)
    if save_now:
      save(n, epoch, epoch_end)
  if start_step < stop_step:
    batches.close()  # ends grain's worker processes
  if latest is None and stop_step == 0:  # num_epochs=0: the untrained model, as step 0
    ckpt.save(0, state, {"step": 0, "epoch": -1, "epoch_complete": True})
  bar.close()
  ckpt.wait()
  if best is not None:
    best.close()

  result = {"validation": last_metrics}
  if stop_step == total_steps:
    result["test"] = evaluate.evaluate_splits(config, workdir, graphdef, state, name, data_dir,
                                              ds_cfg.test_splits, predict, writer=writer)
  writer.close()
  ckpt.close()
  return result


def _resume(ckpt, config, state, optimizer, mesh, workdir):
  """`(state, meta)` of the latest readable checkpoint (a fresh state and {} if
  none is left)."""
  state, meta, step = checkpointing.restore_latest_readable(ckpt, config, state,
                                                            warn=workdir_lib.warn)
  if step is None and (config.model.init_visual or config.model.init_from):
    # A fresh start after all: now the pretrained weights are needed.
    state = state_lib.create_train_state(config, optimizer, log=workdir_lib.echo)[1]
    return jax.device_put(state, NamedSharding(mesh, P())), {}
  if step is not None:
    workdir_lib.echo(f"Resuming from checkpoint step {step} (epoch {meta.get('epoch')}) "
                     f"in {workdir}")
  return state, meta or {}


def _check_finite(state, step: int, ckpt, config) -> int:
  """Stop before anything non-finite is evaluated or saved (`nonfinite="stop"`);
  returns how many updates `nonfinite="skip"` dropped so far."""
  first_bad, skipped = (int(x) for x in jax.device_get((state["nonfinite_step"],
                                                        state["skipped_steps"])))
  if first_bad < 0 or config.nonfinite == "skip":
    return skipped
  ckpt.wait()
  last = ckpt.latest_step()
  where = (f"the last good checkpoint is step {last} in {ckpt.directory}" if last is not None
           else "no checkpoint was written")
  raise TrainingError(
      f"non-finite loss or gradients at step {first_bad} (detected at step {step}); stopped "
      f"without saving: {where}. Lower the learning rate, set --config.nonfinite=skip to drop "
      "such updates, or check the input data")
