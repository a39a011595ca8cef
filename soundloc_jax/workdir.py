"""A training workdir's records: config.json, run_info.json, metrics.jsonl.

  config.json      the run's config (`check_and_record_config`); a workdir
                   that holds checkpoints resumes only with the same config,
                   apart from `RESUMABLE_KEYS` and fields added to the project
                   later at their default; `read_config` reads it back
                   (inference, `model.init_from`), completing a record from
                   before a field existed with that field's default
  run_info.json    where and with what the run ran: git commit, packages,
                   devices, dataset fingerprint, command line
  metrics.jsonl    one JSON object a line (`MetricsWriter`): training logs
                   (`split: "train"`), validation passes (`split: <split>`)
                   and test scores (`split: <test entry>`)
  events.out.tfevents.*  the same numbers for TensorBoard (`EventsFile`,
                   `tensorboard --logdir WORKDIR`): a scalar `<split>/<key>`
                   per numeric field of each record, at its `step`, and the
                   per-epoch overlay grids as images; one file per process
                   start, so a resumed run appends a new file
The run's output lines go through `echo` (stdout) and `warn` (stderr).
Only process 0 writes (`distributed.is_primary`); writes are atomic
(write, then rename), so a kill -9 never leaves a truncated record.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import tqdm

from soundloc_jax import distributed
from soundloc_jax.configs import default as default_config
from soundloc_jax.errors import TrainingError, WorkdirError

# Config fields that may change between a run and its resumption.
RESUMABLE_KEYS = ("max_steps", "num_epochs", "log_every_steps", "checkpoint", "eval", "evals",
                  "dataset.num_workers", "dataset.worker_processes",
                  "dataset.build_if_missing", "dataset.data_dir", "model.depthwise_impl",
                  "model.cpu_ops")
# Fields a config.json must hold to be a training workdir's.
REQUIRED_KEYS = ("seed", "dataset.image_size", "audio.kind", "audio.sample_rate",
                 "audio.clip_seconds", "model.width", "model.layer4_stride",
                 "model.compute_dtype", "optimizer.name")


def _lookup(tree: dict, dotted: str):
  """The value at `dotted` in nested dicts, or the `KeyError` class if absent."""
  node = tree
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return KeyError
    node = node[part]
  return node


def _defaults() -> dict:
  return json.loads(default_config.get_config().to_json_best_effort())


def _with_defaults(recorded: dict, defaults: dict) -> dict:
  """`recorded` with the fields it lacks taken from `defaults` (nested)."""
  out = dict(defaults)
  for key, value in recorded.items():
    both_dicts = isinstance(value, dict) and isinstance(defaults.get(key), dict)
    out[key] = _with_defaults(value, defaults[key]) if both_dicts else value
  return out


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """`workdir/config.json` as a ConfigDict, with fields added to the project
  after it was written set to their defaults (`configs/default.py`)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise WorkdirError(f"{path} not found: {workdir} is not a training workdir "
                       "(training writes config.json and checkpoints/ there)")
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise WorkdirError(f"cannot read {path}: {e}") from e
  if not isinstance(data, dict):
    raise WorkdirError(f"{path}: expected a JSON object (the training config)")
  for key in REQUIRED_KEYS:
    if _lookup(data, key) is KeyError:
      raise WorkdirError(f"{path} has no field {key!r}; was it written by soundloc_jax training?")
  return ml_collections.ConfigDict(_with_defaults(data, _defaults()))


def _strip_resumable(d: dict) -> dict:
  """The config as a dict without the keys a resumed run may change."""
  for key in RESUMABLE_KEYS:
    *parents, leaf = key.split(".")
    node = d
    for p in parents:
      node = node.get(p, {})
    node.pop(leaf, None)
  return d


def _diff_keys(a, b, prefix=""):
  keys = set(a) | set(b) if isinstance(a, dict) and isinstance(b, dict) else set()
  for k in keys:
    va, vb = a.get(k), b.get(k)
    if isinstance(va, dict) and isinstance(vb, dict):
      yield from _diff_keys(va, vb, f"{prefix}{k}.")
    elif va != vb:
      yield f"{prefix}{k}"


def _added_with_default(old: dict, new: dict, key: str, defaults: dict) -> bool:
  """A field that a later version of the project added (absent from the run's
  recorded config) at its default value does not change the run, so a workdir
  from before the field existed still resumes."""
  if _lookup(old, key) is not KeyError or _lookup(new, key) is KeyError:
    return False
  return _lookup(defaults, key) == _lookup(new, key)


def check_and_record_config(config, workdir: str, has_checkpoint: bool) -> None:
  """Refuse to resume a workdir trained with a different config; record the config."""
  path = os.path.join(workdir, "config.json")
  if has_checkpoint and os.path.exists(path):
    with open(path) as f:
      old = _strip_resumable(json.load(f))
    new = _strip_resumable(json.loads(config.to_json_best_effort()))
    defaults = _defaults()
    diff = sorted(k for k in _diff_keys(old, new) if not _added_with_default(old, new, k,
                                                                              defaults))
    if diff:
      raise TrainingError(
          f"workdir {workdir} holds a run with a different config (differs in: "
          f"{', '.join(diff[:8])}); use a new --workdir or the same config to resume")
  write_atomic(path, config.to_json_best_effort(indent=1))


def write_atomic(path: str, text: str) -> None:
  """Write-then-rename (process 0 only), so a kill -9 never leaves a truncated file."""
  if not distributed.is_primary():
    return
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_run_info(workdir: str, config, fingerprint: dict) -> None:
  """`run_info.json`: git commit, Python, platform, package versions, devices,
  the dataset's fingerprint and the command line."""
  del config  # recorded in config.json
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
  write_atomic(os.path.join(workdir, "run_info.json"), json.dumps(info, indent=1))


def format_eta(seconds: float) -> str:
  """`H:MM:SS` of a (non-negative) number of seconds."""
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def echo(text: str) -> None:
  """A line of the run's output on stdout (through tqdm: a live bar stays intact)."""
  tqdm.tqdm.write(text)
  sys.stdout.flush()


def warn(text: str) -> None:
  """A warning of the run on stderr, as `warning: <text>`."""
  tqdm.tqdm.write(f"warning: {text}", file=sys.stderr)
  sys.stderr.flush()


class EventsFile:
  """A TensorBoard event file in `logdir`, written without TensorFlow:
  tensorboardX's protocol buffers and record framing (crc32c), written
  synchronously and flushed after every call, so a kill -9 loses at most the
  record being written (TensorBoard skips a truncated last record) and the
  file never lags behind metrics.jsonl. (tensorboardX's `SummaryWriter`
  queues events for a writer thread, and its `flush` does not wait for that
  queue.) Scalars are stored as TensorBoard stores them, float32.

  Files are named `events.out.tfevents.<seconds>.<host>.<pid>` with the
  seconds increased past every event file already in `logdir`: TensorBoard
  reads a folder's files in name order, and a resumed run's file must come
  after the run's earlier ones (its `purge_step` hides their steps >= it).
  """

  def __init__(self, logdir: str, purge_step: int | None = None):
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboardX.record_writer import RecordWriter  # pylint: disable=g-import-not-at-top
    self._event_pb2 = event_pb2
    os.makedirs(logdir, exist_ok=True)
    stamps = [int(m.group(1)) for m in map(_EVENTS_NAME.match, os.listdir(logdir)) if m]
    stamp = max([int(time.time())] + [t + 1 for t in stamps])
    self.path = os.path.join(
        logdir, f"events.out.tfevents.{stamp:010d}.{socket.gethostname()}.{os.getpid()}")
    self._writer = RecordWriter(self.path)
    self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
    if purge_step is not None:
      # What SummaryWriter(purge_step=...) writes: TensorBoard drops every
      # earlier event of this logdir at steps >= purge_step.
      self._write(event_pb2.Event(wall_time=time.time(), step=purge_step,
                                  session_log=event_pb2.SessionLog(
                                      status=event_pb2.SessionLog.START)))
    self._writer.flush()

  def _write(self, event) -> None:
    self._writer.write(event.SerializeToString())

  def scalars(self, step: int, values: dict) -> None:
    """One event at `step` with a simple-value scalar per `tag: value`."""
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    merged = self._event_pb2.Event(wall_time=time.time(), step=int(step))
    for tag, value in values.items():
      merged.summary.value.extend(summary.scalar(tag, float(value)).value)
    self._write(merged)
    self._writer.flush()

  def image(self, tag: str, png_path: str, step: int) -> None:
    """The PNG file at `png_path` as the image `tag` at `step` (its bytes as they are)."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    with open(png_path, "rb") as f:
      png = f.read()
    with Image.open(png_path) as im:
      width, height, channels = im.width, im.height, len(im.getbands())
    value = summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
        height=height, width=width, colorspace=channels, encoded_image_string=png))
    self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                      summary=summary_pb2.Summary(value=[value])))
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


_EVENTS_NAME = re.compile(r"events\.out\.tfevents\.(\d+)\.")


def event_tag(split: str, key: str) -> str:
  """TensorBoard's tag of field `key` of split `split`: `<split>/<key>`, with
  characters a tag cannot hold (e.g. the `:` of `other_dataset:test`) as `_`."""
  return re.sub(r"[^-/\w.]", "_", f"{split}/{key}")


def scalar_fields(record: dict) -> dict:
  """The fields of a metrics record that TensorBoard gets as scalars: every
  number (bools as 0 / 1) except `step`, tagged `event_tag(split, key)`."""
  return {event_tag(record["split"], key): float(value) for key, value in record.items()
          if key not in ("step", "split") and isinstance(value, (int, float))}


class MetricsWriter:
  """Appends JSON lines to `workdir/metrics.jsonl` and the same numbers to a
  TensorBoard event file in `workdir` (process 0), and `echo`es a summary line
  of each record when given one.

  `purge_step`: a training run that starts at step S passes S + 1, so that
  TensorBoard, like the readers of metrics.jsonl (last record per step and
  split), shows the resumed run's steps instead of those an interrupted run
  had logged after its last checkpoint.
  """

  def __init__(self, workdir: str, purge_step: int | None = None):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = distributed.is_primary()
    self.events = None
    # A run killed mid-write leaves a partial last line: drop it, so every
    # line stays JSON (a resumed run appends the steps after its checkpoint
    # again; readers keep the last record per step and split).
    if self.enabled and os.path.exists(self.path):
      with open(self.path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
          f.truncate(data.rfind(b"\n") + 1)
    if self.enabled:
      self.events = EventsFile(workdir, purge_step=purge_step)

  def write(self, record: dict, echo_line: str | None = None) -> None:
    """`record` needs `step` and `split`."""
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
      self.events.scalars(record["step"], scalar_fields(record))
    if echo_line:
      echo(echo_line)

  def image(self, split: str, name: str, png_path: str, step: int) -> None:
    """A PNG the run wrote (e.g. an overlay grid) into the event file, as
    the image `event_tag(split, name)`."""
    if self.enabled:
      self.events.image(event_tag(split, name), png_path, step)

  def close(self) -> None:
    if self.events is not None:
      self.events.close()
      self.events = None
