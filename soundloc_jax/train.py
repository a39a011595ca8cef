"""The training loop: one jitted step, epoch-end teacher refresh, checkpoints, eval.

Train state (a plain dict pytree, replicated over the mesh, donated to the step):
  `step`                 int32 scalar, global steps done
  `params`, `batch_stats` the student (pure `nnx.State`s)
  `opt_state`            optax state of the student params
  `teacher_params`, `teacher_batch_stats`
                         the frozen copy of the student taken at the end of
                         the previous epoch (ICL's pseudo-label model); the
                         step runs it in eval mode under `stop_gradient` and
                         returns it untouched
  `rng`                  uint32 key data; step randomness is fold_in(rng, step)

Epoch `e` covers steps `[e * steps_per_epoch, (e + 1) * steps_per_epoch)`, with
`steps_per_epoch = N // global_batch`; after its last step the teacher
becomes a copy (new buffers: the student's are donated) of the student, the
validation split is scored and a checkpoint is written. Rerunning the same
command resumes from the last complete checkpoint, and since the input stream
is a pure function of the step the resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from soundloc_jax import audio as audio_lib
from soundloc_jax import checkpointing, distributed, evaluator, input_pipeline, methods, neighbours
from soundloc_jax.errors import ConfigError, DatasetError, TrainingError
from soundloc_jax.models import av_model

# Config fields that may change between a run and its resumption.
RESUMABLE_KEYS = ("max_steps", "num_epochs", "log_every_steps", "checkpoint", "eval",
                  "dataset.num_workers", "dataset.build_if_missing", "dataset.data_dir")


# ----------------------------------------------------------------------------
# Setup helpers
# ----------------------------------------------------------------------------

def enable_compilation_cache(path: str | None = None) -> None:
  """Persistent XLA cache so reruns and tests do not recompile the same step."""
  path = path or os.environ.get("SOUNDLOC_XLA_CACHE",
                                os.path.expanduser("~/.cache/soundloc_jax/xla"))
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def resolve_data_dir(config) -> str:
  if config.dataset.data_dir:
    return os.path.expanduser(config.dataset.data_dir)
  from soundloc_jax import demo_data
  return demo_data.default_data_dir()


def make_optimizer(config) -> optax.GradientTransformation:
  oc = config.optimizer
  if oc.name == "adam":
    opt = optax.adam(oc.learning_rate)
  elif oc.name == "adamw":
    opt = optax.adamw(oc.learning_rate, weight_decay=oc.weight_decay)
  elif oc.name == "sgd":
    opt = optax.sgd(oc.learning_rate, momentum=0.9)
  else:
    raise ConfigError(f"config.optimizer.name: unknown optimizer {oc.name!r}; "
                     "available: adam, adamw, sgd")
  if oc.grad_clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(oc.grad_clip_norm), opt)
  return opt


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def create_train_state(config, optimizer, pretrained: bool = True):
  """(graphdef, state) for a fresh run; the teacher starts as a copy of the student.

  With `config.model.init_visual` set (and `pretrained`), the visual stream
  starts from that directory's ResNet-18 (`tools.resnet_weights`); with
  `config.model.init_from`, both streams start from that workdir's latest
  checkpoint (`init_from_workdir`). A caller that restores a checkpoint right
  after may pass `pretrained=False`, so neither need exist any more."""
  model = av_model.build_model(config.model, seed=config.seed)
  init_visual = config.model.get("init_visual", "")
  init_from = config.model.get("init_from", "")
  if init_visual and init_from:
    raise ConfigError("config.model.init_visual and config.model.init_from are both set; "
                      "init_from already holds the visual stream's weights: set one")
  if init_visual and pretrained:
    from soundloc_jax.tools import resnet_weights
    resnet_weights.load_dir(model.visual, init_visual)
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  params, batch_stats = nnx.as_pure(params), nnx.as_pure(batch_stats)
  if init_from and pretrained:
    params, batch_stats = init_from_workdir(config, init_from)
  state = {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "batch_stats": batch_stats,
      "opt_state": optimizer.init(params),
      "teacher_params": _copy(params),
      "teacher_batch_stats": _copy(batch_stats),
      "rng": jax.random.key_data(jax.random.key(config.seed)),
      # First step whose loss or gradients were not finite (-1: none yet),
      # and how many updates `nonfinite="skip"` dropped.
      "nonfinite_step": jnp.full((), -1, jnp.int32),
      "skipped_steps": jnp.zeros((), jnp.int32),
  }
  return graphdef, state


# Model fields that may differ between a run and the workdir it starts from
# (they do not change the shapes or the meaning of the weights).
_INIT_FROM_FREE = ("compute_dtype", "init_visual", "init_from")


def init_from_workdir(config, workdir: str):
  """`(params, batch_stats)` of the student in `workdir`'s latest checkpoint,
  for a fresh run of `config`; a ConfigError names what differs when that
  run's model or audio front end is not this one's."""
  from soundloc_jax import audio, inference
  source = inference.read_config(os.path.abspath(os.path.expanduser(workdir)))
  ours, theirs = config.model.to_dict(), source.model.to_dict()
  differ = sorted(k for k in set(ours) | set(theirs)
                  if k not in _INIT_FROM_FREE and ours.get(k) != theirs.get(k))
  differ = [f"model.{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differ]
  if audio.params_dict(source.audio) != audio.params_dict(config.audio):
    differ.append(f"audio: {audio.params_dict(source.audio)} there, "
                  f"{audio.params_dict(config.audio)} here")
  if differ:
    raise ConfigError(f"config.model.init_from={workdir!r} was trained with another model: "
                      + "; ".join(differ))
  loaded = inference.load(workdir)
  print(f"Starting from the weights of {loaded.workdir} (checkpoint step {loaded.step})",
        flush=True)
  return loaded.params, loaded.batch_stats


def refresh_teacher(state):
  """Epoch end: the teacher becomes a frozen copy (fresh buffers) of the student."""
  return dict(state, teacher_params=_copy(state["params"]),
              teacher_batch_stats=_copy(state["batch_stats"]))


# ----------------------------------------------------------------------------
# The jitted step
# ----------------------------------------------------------------------------

def make_train_step(graphdef, method: methods.Method, method_config, optimizer,
                    teacher_active: bool, mesh=None, skip_nonfinite: bool = False):
  """Jitted `(state, batch) -> (state, metrics)`; state donated, batch sharded on 'data'.

  A step whose loss or gradients are not finite is recorded in
  `state["nonfinite_step"]` (the first one); with `skip_nonfinite` its update
  is dropped (params, optimizer and BatchNorm state stay as they were).
  """

  def step_fn(state, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    teacher_outputs = None
    if teacher_active:
      teacher = nnx.merge(graphdef, state["teacher_params"], state["teacher_batch_stats"])
      teacher.eval()
      teacher_outputs = jax.lax.stop_gradient(teacher(*model_inputs(batch, method)))

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state["batch_stats"])
      model.train()
      outputs = model(*model_inputs(batch, method))
      loss, aux = method.loss(outputs, teacher_outputs, batch, method_config, rng)
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


def model_inputs(batch, method: methods.Method):
  """`(image, spectrogram)` for the model. Neighbour batches hold `[B, 2, ...]`
  (base, neighbour; `input_pipeline.train_iterator`): flattened to `[2B, ...]`
  (row-major, so each device's rows stay its own) for one forward over all,
  BatchNorm statistics included; the method's loss reshapes the outputs back."""
  image, spectrogram = batch["image"], batch["spectrogram"]
  if method.needs_neighbours:
    image = image.reshape((-1,) + image.shape[2:])
    spectrogram = spectrogram.reshape((-1,) + spectrogram.shape[2:])
  return image, spectrogram


def make_predict_fn(graphdef, outputs: str = "response"):
  """Jitted eval-mode forward: `(params, batch_stats, image, spectrogram) -> response`
  (`outputs="all"`: the model's output dict, which retrieval scoring needs)."""

  @jax.jit
  def predict(params, batch_stats, image, spectrogram):
    model = nnx.merge(graphdef, params, batch_stats)
    model.eval()
    out = model(image, spectrogram)
    return out if outputs == "all" else out["response"]

  return predict


# ----------------------------------------------------------------------------
# Run records
# ----------------------------------------------------------------------------

def _strip_resumable(d: dict) -> dict:
  """The config as a dict without the keys a resumed run may change."""
  for key in RESUMABLE_KEYS:
    *parents, leaf = key.split(".")
    node = d
    for p in parents:
      node = node.get(p, {})
    node.pop(leaf, None)
  return d


def check_and_record_config(config, workdir: str, has_checkpoint: bool) -> None:
  """Refuse to resume a workdir trained with a different config; record the config."""
  path = os.path.join(workdir, "config.json")
  if has_checkpoint and os.path.exists(path):
    with open(path) as f:
      old = _strip_resumable(json.load(f))
    new = _strip_resumable(json.loads(config.to_json_best_effort()))
    diff = sorted(k for k in _diff_keys(old, new) if not _added_with_default(old, new, k))
    if diff:
      raise TrainingError(
          f"workdir {workdir} holds a run with a different config (differs in: "
          f"{', '.join(diff[:8])}); use a new --workdir or the same config to resume")
  _write_atomic(path, config.to_json_best_effort(indent=1))


def is_primary() -> bool:
  """Process 0 writes the run's files (records, metrics, reports, plots); with
  several processes the others compute the same values and write nothing
  (orbax coordinates the checkpoint writes itself)."""
  return jax.process_index() == 0


def _write_atomic(path: str, text: str) -> None:
  """Write-then-rename, so a kill -9 never leaves a truncated file behind."""
  if not is_primary():
    return
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _lookup(tree: dict, dotted: str):
  node = tree
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return KeyError
    node = node[part]
  return node


def _added_with_default(old: dict, new: dict, key: str) -> bool:
  """A field that a later version of the project added (absent from the run's
  recorded config) at its default value does not change the run, so a workdir
  from before the field existed still resumes."""
  if _lookup(old, key) is not KeyError:
    return False
  from soundloc_jax.configs import default as default_config
  defaults = json.loads(default_config.get_config().to_json_best_effort())
  return _lookup(defaults, key) == _lookup(new, key) and _lookup(new, key) is not KeyError


def _diff_keys(a, b, prefix=""):
  keys = set(a) | set(b) if isinstance(a, dict) and isinstance(b, dict) else set()
  for k in keys:
    va, vb = a.get(k), b.get(k)
    if isinstance(va, dict) and isinstance(vb, dict):
      yield from _diff_keys(va, vb, f"{prefix}{k}.")
    elif va != vb:
      yield f"{prefix}{k}"


def dataset_fingerprint(name: str, data_dir: str) -> dict:
  import tensorflow_datasets as tfds
  builder = tfds.builder(name, data_dir=data_dir)
  info_json = os.path.join(builder.data_dir, "dataset_info.json")
  digest = ""
  if os.path.exists(info_json):
    with open(info_json, "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()[:16]
  return {"name": name, "version": str(builder.info.version), "data_dir": builder.data_dir,
          "splits": {k: v.num_examples for k, v in builder.info.splits.items()},
          "dataset_info_sha256": digest}


def check_audio_matches(name: str, data_dir: str, config) -> None:
  """The dataset's recorded front end must equal config.audio (else the model
  would train on spectrograms it will never see at inference)."""
  import tensorflow_datasets as tfds
  metadata = tfds.builder(name, data_dir=data_dir).info.metadata or {}
  recorded = metadata.get("audio")
  if recorded is None:
    return
  expected = audio_lib.params_dict(config.audio)

  def same(a, b):
    if isinstance(b, (int, float)):
      return math.isclose(float(a), float(b))
    return a == b

  differ = [k for k, v in expected.items() if k in recorded and not same(recorded[k], v)]
  if differ:
    raise DatasetError(
        f"dataset {name!r} was built with audio front end "
        f"{ {k: recorded[k] for k in expected if k in recorded} }, but config.audio is "
        f"{expected} (differs in {', '.join(differ)}); set --config.audio.* to match or "
        "rebuild the dataset")


def write_run_info(workdir: str, config, fingerprint: dict) -> None:
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__)),
                            timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    commit = ""
  versions = {}
  for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
              "tensorflow-datasets", "numpy", "librosa"):
    try:
      versions[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      versions[pkg] = None
  info = {"git_commit": commit, "python": sys.version.split()[0], "platform": platform.platform(),
          "packages": versions, "devices": [str(d) for d in jax.devices()],
          "process_count": jax.process_count(), "dataset": fingerprint,
          "argv": sys.argv, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
  _write_atomic(os.path.join(workdir, "run_info.json"), json.dumps(info, indent=1))


class MetricsWriter:
  """Appends JSON lines to `workdir/metrics.jsonl` and prints a short summary."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = is_primary()
    # A run killed mid-write leaves a partial last line: drop it, so every
    # line stays JSON (a resumed run appends the steps after its checkpoint
    # again; readers keep the last record per step and split).
    if self.enabled and os.path.exists(self.path):
      with open(self.path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
          f.truncate(data.rfind(b"\n") + 1)

  def write(self, record: dict, echo: str | None = None) -> None:
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if echo:  # tqdm.write keeps an active progress bar intact
      tqdm.tqdm.write(echo)
      sys.stdout.flush()


def _fmt_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ----------------------------------------------------------------------------
# Train and evaluate
# ----------------------------------------------------------------------------

def resolve_dataset(name: str, data_dir: str, build_if_missing: bool) -> str:
  """The TFDS name to read; the demo dataset gets its config made explicit and
  is built on first use."""
  if name.split("/")[0] == "av_digits":
    from soundloc_jax import demo_data
    name = demo_data.dataset_name(name)
    if build_if_missing:
      # One process builds; the others wait for it instead of racing on the files.
      if is_primary():
        demo_data.ensure_built(data_dir, name)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"dataset {name} ready")
  return name


def prepare_data(config) -> tuple[str, str]:
  """`(dataset name, data_dir)` of the training dataset."""
  data_dir = resolve_data_dir(config)
  return resolve_dataset(config.dataset.name, data_dir, config.dataset.build_if_missing), data_dir


def train_and_evaluate(config, workdir: str) -> dict:
  """Train per `config` in `workdir` (resuming if it holds a checkpoint); returns
  the final validation metrics (and test metrics when training completed)."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  method = methods.get(config.method.name)
  method.check_config(config.method)
  name, data_dir = prepare_data(config)
  ds_cfg = config.dataset
  train_source = input_pipeline.open_source(name, ds_cfg.train_split, data_dir)
  val_source = input_pipeline.open_source(name, ds_cfg.validation_split, data_dir)
  check_audio_matches(name, data_dir, config)

  # Auto axis: XLA propagates shardings (the loss's all-pairs logits need a
  # gathered batch), we only pin the inputs and the state.
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  if config.batch_size % jax.device_count():
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by the "
                     f"{jax.device_count()} devices")
  optimizer = make_optimizer(config)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.checkpoint.max_to_keep)
  latest = ckpt.latest_step()
  # A resumed run restores every weight, so it does not need (or read) the
  # model.init_visual folder or the model.init_from workdir again.
  graphdef, state = create_train_state(config, optimizer, pretrained=latest is None)
  replicated = NamedSharding(mesh, P())
  state = jax.device_put(state, replicated)
  check_and_record_config(config, workdir, has_checkpoint=latest is not None)
  write_run_info(workdir, config, dataset_fingerprint(name, data_dir))
  if latest is not None:
    state, meta, latest = restore_latest_readable(ckpt, config, state)
    if latest is None and (config.model.get("init_visual")
                           or config.model.get("init_from")):  # a fresh start after all
      state = jax.device_put(create_train_state(config, optimizer)[1], replicated)
    if latest is not None:
      print(f"Resuming from checkpoint step {latest} (epoch {meta.get('epoch')}) in {workdir}",
            flush=True)
  # The best epoch by a validation metric, kept apart from the last N.
  best_key = config.checkpoint.best_metric
  if best_key and best_key not in ("val_r1", "val_r5") and not evaluator.source_is_annotated(
      val_source):  # known now, not after the first epoch
    raise ConfigError(f"config.checkpoint.best_metric={best_key!r} needs localization "
                      f"annotations, which validation split {ds_cfg.validation_split!r} of "
                      f"{name!r} lacks; use val_r1 or val_r5 (held-out retrieval)")
  best_ckpt = (checkpointing.Checkpointer(os.path.join(workdir, "checkpoints_best"), max_to_keep=1)
               if best_key else None)
  best_value = -math.inf
  if best_ckpt is not None and best_ckpt.latest_step() is not None:
    try:
      best_value = best_ckpt.restore_meta(best_ckpt.latest_step()).get(best_key, -math.inf)
    except Exception as e:  # damaged by hand or a disk fault: the next epoch replaces it
      print(f"warning: best checkpoint in {best_ckpt.directory} is unreadable "
            f"({type(e).__name__}); the next validated epoch replaces it", file=sys.stderr)

  start_step = int(jax.device_get(state["step"]))
  steps_per_epoch = len(train_source) // config.batch_size
  total_steps = steps_per_epoch * config.num_epochs
  stop_step = min(total_steps, config.max_steps) if config.max_steps else total_steps
  writer = MetricsWriter(workdir)
  predict = make_predict_fn(graphdef, outputs="all")
  val_eval = evaluator.SplitEvaluator(ds_cfg.validation_split, val_source, config)
  overlay_ids = np.linspace(0, len(val_source) - 1, config.eval.num_overlays).astype(int)
  step_fns = {}
  last_metrics = {}
  skipped_reported = 0
  batch_sharding = NamedSharding(mesh, P("data"))
  device_keys = (input_pipeline.NEIGHBOUR_DEVICE_KEYS if method.needs_neighbours
                 else input_pipeline.DEVICE_KEYS)

  if start_step < stop_step:
    print(f"Training {method.name} for {stop_step - start_step} steps "
          f"({steps_per_epoch} steps/epoch, global batch {config.batch_size}, "
          f"{jax.device_count()} device(s)); logs in {writer.path}", flush=True)
    # HardPos: neighbour sets of the training split (mined file or Random HP).
    table = (neighbours.from_config(config.method, train_source, config.seed)
             if method.needs_neighbours else None)
    batches, _ = input_pipeline.train_iterator(
        train_source, global_batch=config.batch_size, seed=config.seed, start_step=start_step,
        num_steps=stop_step, image_size=ds_cfg.image_size, augment=ds_cfg.augment,
        num_threads=ds_cfg.num_workers, process_index=jax.process_index(),
        process_count=jax.process_count(), neighbours=table)
  t_start, steps_timed, t_log, samples_since_log = time.time(), 0, time.time(), 0
  # A live bar on terminals only (disable=None); logs get the ETA in each line.
  bar = tqdm.tqdm(total=stop_step, initial=start_step, unit="step", disable=None,
                  dynamic_ncols=True, leave=False)
  for step in range(start_step, stop_step):
    epoch = step // steps_per_epoch
    active = method.teacher_active(epoch, config.method)
    if active not in step_fns:
      step_fns[active] = make_train_step(graphdef, method, config.method, optimizer, active, mesh,
                                         skip_nonfinite=config.nonfinite == "skip")
    batch = distributed.global_batch(next(batches), mesh, batch_sharding.spec, keys=device_keys)
    state, metrics = step_fns[active](state, batch)
    samples_since_log += config.batch_size
    steps_timed += 1
    bar.update(1)

    epoch_end = (step + 1) % steps_per_epoch == 0
    save_now = epoch_end or step + 1 == stop_step or (
        config.checkpoint.every_steps and (step + 1) % config.checkpoint.every_steps == 0)
    log_now = (step + 1) % config.log_every_steps == 0 or step + 1 == stop_step
    if log_now or save_now:
      skipped = _check_finite(state, step + 1, ckpt, config)
      if skipped > skipped_reported:
        print(f"warning: {skipped} update(s) with non-finite loss or gradients skipped so far",
              file=sys.stderr, flush=True)
        skipped_reported = skipped
    if log_now:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      now = time.time()
      rate = samples_since_log / max(now - t_log, 1e-9)
      eta = (stop_step - step - 1) * (now - t_start) / steps_timed
      writer.write({"step": step + 1, "epoch": epoch, "split": "train",
                    "samples_per_s": rate, "teacher": active, **metrics},
                   echo=f"step {step + 1}/{stop_step} epoch {epoch} loss {metrics['loss']:.4f}"
                        f" {rate:.0f} samples/s ETA {_fmt_eta(eta)}")
      t_log, samples_since_log = now, 0

    if epoch_end:
      if method.needs_teacher:
        state = refresh_teacher(state)
      if (epoch + 1) % config.eval.every_epochs == 0 or step + 1 == stop_step:
        last_metrics = _evaluate_epoch(val_eval, predict, state, epoch, step + 1, writer,
                                       workdir, overlay_ids, val_source, config)
    if save_now:
      meta = {"step": step + 1, "epoch": epoch, "epoch_complete": bool(epoch_end),
              **last_metrics}
      if epoch_end and best_ckpt is not None and last_metrics and best_key not in last_metrics:
        raise ConfigError(f"config.checkpoint.best_metric={best_key!r} is not a validation "
                          f"metric; available: {', '.join(sorted(last_metrics))}")
      if epoch_end and best_ckpt is not None and last_metrics.get(best_key, -math.inf) > best_value:
        best_value = last_metrics[best_key]
        # Finished before the step's checkpoint starts: a kill in between
        # resumes before this epoch end, which then redoes the comparison.
        best_ckpt.save(step + 1, state, meta)
        best_ckpt.wait()
      ckpt.save(step + 1, state, meta)
  bar.close()
  ckpt.wait()
  if best_ckpt is not None:
    best_ckpt.close()

  result = {"validation": last_metrics}
  if stop_step == total_steps:
    result["test"] = evaluate_splits(config, workdir, graphdef, state, name, data_dir,
                                     ds_cfg.test_splits, predict)
  ckpt.close()
  return result


def restore_latest_readable(ckpt, config, abstract_state):
  """`(state, meta, step)` of the latest checkpoint that can be read (step None:
  none, `abstract_state` returned). A kill -9 cannot leave a listed but
  unreadable checkpoint (orbax renames a step folder into place once written),
  but a disk fault or a hand edit can: such a folder is moved aside to
  `<step>.corrupt` (kept for inspection, ignored by orbax) with a warning, and
  the previous one is used. A checkpoint of another model is an error."""
  from soundloc_jax import inference
  while (step := ckpt.latest_step()) is not None:
    try:
      return inference.restore_checkpoint(ckpt.directory, config, abstract_state, step,
                                          source="the config")
    except inference.CorruptCheckpointError as e:
      src = os.path.join(ckpt.directory, str(step))
      aside, n = f"{src}.corrupt", 1
      while os.path.exists(aside):
        aside, n = f"{src}.corrupt{n}", n + 1
      # FileNotFoundError: another process of a multi-host run moved it already.
      with contextlib.suppress(FileNotFoundError):
        os.rename(src, aside)
      print(f"warning: {e}; moved it to {aside} and trying the previous checkpoint",
            file=sys.stderr, flush=True)
      ckpt.reload()
  print(f"warning: no readable checkpoint left in {ckpt.directory}; starting from step 0",
        file=sys.stderr, flush=True)
  return abstract_state, {}, None


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


def _evaluate_epoch(val_eval, predict, state, epoch, step, writer, workdir, overlay_ids,
                    val_source, config) -> dict:
  t0 = time.time()
  # Retrieval too (val_r1, val_r5): the only score of an unannotated split.
  res = val_eval.run(lambda im, sp: predict(state["params"], state["batch_stats"], im, sp),
                     retrieval=True)
  metrics = {f"val_{k}": float(v) for k, v in res.items()}
  writer.write({"step": step, "epoch": epoch, "split": val_eval.name, **res.metrics},
               echo=f"epoch {epoch} {val_eval.name}: "
                    f"{res.describe(config.eval.success_threshold)} [{time.time() - t0:.1f}s]")
  if not is_primary():
    return metrics
  overlay_dir = os.path.join(workdir, "overlays")
  os.makedirs(overlay_dir, exist_ok=True)
  evaluator.save_overlays(res, overlay_ids, val_source, config,
                          os.path.join(overlay_dir, f"{val_eval.name}_epoch_{epoch:03d}.png"))
  return metrics


def evaluate_splits(config, workdir, graphdef, state, name, data_dir, splits,
                    predict=None) -> dict:
  """Score `splits` with the state's student; reports in `workdir/eval/<entry>/`.

  An entry is a split of the training dataset (`"test"`) or of another one
  (`"other_dataset:test"`, e.g. train on VGGSound, test on Flickr too).
  """
  predict = predict or make_predict_fn(graphdef, outputs="all")
  out = {}
  for entry in splits:
    split_name, split = name, entry
    if ":" in entry:
      other, split = entry.rsplit(":", 1)
      split_name = resolve_dataset(other, data_dir, config.dataset.build_if_missing)
    source = input_pipeline.open_source(split_name, split, data_dir)
    res = evaluator.SplitEvaluator(entry, source, config).run(
        lambda im, sp: predict(state["params"], state["batch_stats"], im, sp))
    report_dir = os.path.join(workdir, "eval", entry.replace("/", "_").replace(":", "_"))
    if is_primary():
      evaluator.write_report(res, report_dir, source, config)
    print(f"{entry}: {res.describe(config.eval.success_threshold)}; report in {report_dir}",
          flush=True)
    out[entry] = res.metrics
  return out


def evaluate_checkpoint(config, workdir: str, step: int | None = None,
                        best: bool = False) -> dict:
  """`--mode=eval`: load a checkpoint (the latest, the given `step`, or with
  `best` the best validation epoch) and score the test splits."""
  from soundloc_jax import inference
  workdir = os.path.abspath(workdir)
  directory = os.path.join(workdir, "checkpoints_best" if best else "checkpoints")
  if not os.path.isdir(directory):
    raise TrainingError(f"no checkpoint in {workdir} ({directory} does not exist); train first")
  name, data_dir = prepare_data(config)
  optimizer = make_optimizer(config)
  graphdef, state = create_train_state(config, optimizer, pretrained=False)  # restored below
  state, _, step = inference.restore_checkpoint(directory, config, state, step,
                                                source="the config")
  print(f"Evaluating checkpoint step {step} of {workdir}", flush=True)
  return evaluate_splits(config, workdir, graphdef, state, name, data_dir,
                         config.dataset.test_splits)
