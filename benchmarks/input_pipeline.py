"""Input pipeline cost per core: storage, the augmented training batches per
stage, per worker process, and through the real training loop (issue 18).

  python benchmarks/input_pipeline.py [--data DIR] [--examples 1024] [--batch 64]
      [--kinds icl,hardpos] [--workers 0,1,2] [--steps 12] [--repeat 3]
      [--storage] [--stages] [--overlap N] [--code DIR]

Data: a `folder` dataset of `--examples` examples built with the Python API
(random crops of scikit-learn's two bundled photographs, china.jpg and
flower.jpg, 427x640, stored as the builders store training frames: shorter
side 246 -> 246x~369-437 JPEG q95; 4 s wavs -> float16 257x299 LVS
spectrograms). `--data DIR` keeps it between runs (built there if missing).
Prints one JSON line per measurement; every line carries the 1-minute load
average at its end, `load1` (this machine may be shared: CPU seconds are the
figure that load disturbs least, wall rates are upper bounds of the cost).

  * `pipeline`: `input_pipeline.train_iterator` at 224 with augmentation, one
    batch kind (`icl`: the ICL/LVS batch; `hardpos`: the HardPos batch, Random
    HP neighbours with K = min(1000, N-1), counted in base examples), per
    `--workers` value (0: built in this process by grain's read thread;
    n > 0: n grain worker processes), each batch then put on the device
    (`distributed.global_batch`) and waited for. After 2 warm-up batches,
    `--steps` batches are timed: `examples_per_s` (wall),
    `cpu_ms_per_example` (CPU time of this process and its worker processes
    together, from /proc via psutil) and the per-core figure
    `examples_per_cpu_s` = 1000 / cpu_ms_per_example.
  * `stages` (`--stages`): CPU ms per example of each stage, measured one
    stage at a time in this process on the same examples, for the host path
    of commit 1dea26c (`path: "per-example"`: TFDS decodes the whole
    example, `augment_image` resizes/crops/flips, float32 spectrogram,
    grain stacks the batch) and for the current one (`path: "batch"`:
    `BatchLoader`), next to the whole loader's cost (`loader`): read
    (array_record record, zstd), parse (tf.Example), decode (JPEG; the
    current path leaves the colour conversion to the device,
    `decode_with_rgb_conversion` is the same decode with it, and
    `ycbcr_decode_saving` the median difference of 30 paired runs), crop_flip,
    spectrogram, batching, transfer; and `worker_transport`, what a batch
    built in a worker process costs on top: grain copies it into fresh
    shared memory (page faults on every page) for the training process.
  * `storage` (`--storage`): bytes and decode cost of a stored frame raw vs
    JPEG, of the spectrogram vs the waveform, and of reading one record from
    an array_record file stored zstd (the TFDS default) vs uncompressed.
  * `overlap` (`--overlap N`): the real training loop (`train_and_evaluate`,
    N grain worker processes, sharding, prefetch to the device) with the step
    replaced by a no-op device function of the same inputs (it reads one
    element of each: on a CPU backend real device work would take the
    host's cores): `samples_per_s`
    from the 7th step to the last (the first ones compile and start the
    workers), `cpu_ms_per_sample` of this process and its workers over the
    same steps (epoch ends included: teacher copy, checkpoint), and the
    loop's own logged rates.

`--code DIR` imports `soundloc_jax` from another checkout (e.g. a `git
archive` of an older commit) to measure its pipeline the same way; options
that checkout lacks (worker processes, encoded images) are skipped.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 224


def _load1() -> float:
  return round(os.getloadavg()[0], 2)


def _emit(record: dict) -> None:
  print(json.dumps(dict(record, load1=_load1())), flush=True)


def _timeit(fn, repeat: int) -> float:
  fn()
  t0 = time.perf_counter()
  for _ in range(repeat):
    fn()
  return (time.perf_counter() - t0) / repeat


def _cpu_ms(fn, n: int) -> float:
  """CPU ms (this process, all threads) per item of `fn()` over `n` items."""
  t0 = time.process_time()
  fn()
  return round(1e3 * (time.process_time() - t0) / n, 4)


def photos() -> list[np.ndarray]:
  from sklearn.datasets import load_sample_image  # bundled files, no download
  return [load_sample_image(n) for n in ("china.jpg", "flower.jpg")]


# ---------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------

def storage(source) -> dict:
  from PIL import Image
  from soundloc_jax import audio, builder_lib
  out = {"benchmark": "storage"}
  raw_b, jpeg_b, raw_t, jpeg_t = [], [], [], []
  for photo in photos():
    frame = builder_lib.train_frame(photo)
    raw = frame.tobytes()
    jpeg = builder_lib.encode_image(frame, "JPEG")
    raw_b.append(len(raw))
    jpeg_b.append(len(jpeg))
    raw_t.append(_timeit(lambda: np.frombuffer(raw, np.uint8).reshape(frame.shape).copy(), 200))
    jpeg_t.append(_timeit(lambda: np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")), 50))
    out.setdefault("frame_shape", list(frame.shape))
  out.update(frame_raw_bytes=int(np.mean(raw_b)), frame_jpeg95_bytes=int(np.mean(jpeg_b)),
             frame_raw_decode_ms=round(1e3 * float(np.mean(raw_t)), 3),
             frame_jpeg95_decode_ms=round(1e3 * float(np.mean(jpeg_t)), 3))
  rng = np.random.default_rng(0)
  t = np.arange(48000) / 16000
  wave = (0.3 * np.sin(2 * np.pi * 440 * t) + rng.normal(0, 0.05, t.size)).astype(np.float32)
  spec = audio.log_spectrogram(wave, 16000, audio.LVS_TRAIN).astype(np.float16)
  pcm = builder_lib.to_pcm16(wave)
  spec_bytes, pcm_bytes = spec.tobytes(), pcm.tobytes()
  out.update(
      spectrogram_shape=list(spec.shape), spectrogram_f16_bytes=len(spec_bytes),
      waveform_i16_bytes=len(pcm_bytes),
      spectrogram_f16_decode_ms=round(1e3 * _timeit(
          lambda: np.frombuffer(spec_bytes, np.float16).astype(np.float32), 200), 3),
      waveform_i16_to_spectrogram_ms=round(1e3 * _timeit(
          lambda: audio.log_spectrogram(np.frombuffer(pcm_bytes, np.int16) / np.float32(32768),
                                        16000, audio.LVS_TRAIN), 30), 3))
  out.update(_record_compression(source))
  return out


def _record_compression(source, n: int = 128) -> dict:
  """Read cost of the same records from array_record files written zstd:3 (the
  TFDS default the builders get) and uncompressed."""
  from array_record.python import array_record_module as ar
  records = [source.data_source[i] for i in range(min(n, len(source)))]
  out = {"record_bytes": int(np.mean([len(r) for r in records]))}
  with tempfile.TemporaryDirectory() as tmp:
    for name, options in (("zstd", "group_size:1,zstd:3"), ("uncompressed", "group_size:1,uncompressed")):
      path = os.path.join(tmp, f"{name}.array_record")
      writer = ar.ArrayRecordWriter(path, options)
      for r in records:
        writer.write(r)
      writer.close()
      reader = ar.ArrayRecordReader(path)
      positions = list(range(len(records)))
      for i in positions:
        reader.read([i])
      out[f"record_read_{name}_cpu_ms"] = _cpu_ms(
          lambda: [reader.read([i]) for i in positions * 4], 4 * len(positions))
      out[f"record_{name}_file_bytes"] = os.path.getsize(path) // len(records)
      reader.close()
  return out


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

def make_folder(root: str, n: int) -> None:
  from tests import media_fixtures as mf
  from PIL import Image
  rng = np.random.default_rng(0)
  images = photos()
  for i in range(n):
    photo = images[i % len(images)]
    h = int(rng.integers(240, photo.shape[0] + 1))
    w = min(photo.shape[1], int(h * rng.uniform(1.2, 1.8)))
    top, left = rng.integers(0, photo.shape[0] - h + 1), rng.integers(0, photo.shape[1] - w + 1)
    Image.fromarray(photo[top:top + h, left:left + w]).save(os.path.join(root, f"{i:05d}.jpg"),
                                                            quality=90)
    mf.write_audio(os.path.join(root, f"{i:05d}.wav"),
                   mf.tone(4.0, freq=200 + 3 * i) + rng.normal(0, 0.02, 64000).astype(np.float32))


def ensure_data(root: str, n: int) -> str:
  """`root/d`, the TFDS data_dir holding the `folder` dataset (built if missing)."""
  import tensorflow_datasets as tfds
  from soundloc_jax.data_builders.folder import folder_dataset_builder
  data = os.path.join(root, "d")
  if os.path.isdir(os.path.join(data, "folder")):
    return data
  manual = os.path.join(root, "m")
  os.makedirs(manual, exist_ok=True)
  make_folder(manual, n)
  builder = folder_dataset_builder.Builder(data_dir=data, file_format="array_record")
  t0 = time.perf_counter()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  seconds = time.perf_counter() - t0
  _emit({"benchmark": "build", "examples": n, "workers": os.cpu_count(),
         "seconds": round(seconds, 2), "examples_per_s": round(n / seconds, 1)})
  return data


def open_train(data_dir: str):
  """The training split as the training loop opens it (encoded images where
  this checkout supports it)."""
  from soundloc_jax import data
  try:
    return data.open_source("folder", "train", data_dir, encoded_images=True)
  except TypeError:  # a checkout from before encoded images
    return data.open_source("folder", "train", data_dir)


def neighbour_table(kind: str, source):
  if kind != "hardpos":
    return None
  from soundloc_jax.methods import neighbours
  return neighbours.RandomNeighbours(len(source), min(1000, len(source) - 1), seed=0)


# ---------------------------------------------------------------------------
# Pipeline: examples/s and CPU per example, per worker-process count
# ---------------------------------------------------------------------------

def _children_cpu_s(proc) -> float:
  """CPU seconds of this process's children: live ones (psutil) and ended ones."""
  import resource
  ended = resource.getrusage(resource.RUSAGE_CHILDREN)
  total = ended.ru_utime + ended.ru_stime
  for child in proc.children(recursive=True):
    try:
      t = child.cpu_times()
      total += t.user + t.system
    except Exception:  # pylint: disable=broad-except  (a child that just ended)
      continue  # its time is in `ended` once reaped
  return total


def pipeline(source, kind: str, workers: int, batch: int, steps: int) -> dict:
  import inspect
  import jax
  import psutil
  from jax.sharding import PartitionSpec as P
  from soundloc_jax import distributed, input_pipeline
  kwargs = {}
  if workers:
    if "worker_processes" not in inspect.signature(input_pipeline.train_iterator).parameters:
      return {}
    kwargs["worker_processes"] = workers
  table = neighbour_table(kind, source)
  keys = input_pipeline.NEIGHBOUR_DEVICE_KEYS if table else input_pipeline.DEVICE_KEYS
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  warmup = 2
  it, _ = input_pipeline.train_iterator(
      source, global_batch=batch, seed=0, start_step=0, num_steps=warmup + steps,
      image_size=IMAGE_SIZE, augment=True, num_threads=1, neighbours=table, **kwargs)
  put = lambda b: jax.block_until_ready(distributed.global_batch(b, mesh, P("data"), keys=keys))
  for _ in range(warmup):  # worker start, first reads, transfer set-up
    put(next(it))
  proc = psutil.Process()
  cpu0, child0, t0 = time.process_time(), _children_cpu_s(proc), time.perf_counter()
  for _ in range(steps):
    last = put(next(it))
  wall = time.perf_counter() - t0
  main_cpu, worker_cpu = time.process_time() - cpu0, _children_cpu_s(proc) - child0
  if hasattr(it, "close"):
    it.close()
  n = steps * batch
  cpu_ms = 1e3 * (main_cpu + worker_cpu) / n
  return {"benchmark": "pipeline", "kind": kind, "workers": workers, "batch": batch,
          "steps": steps, "image": list(last["image"].shape[1:]),
          "image_dtype": str(last["image"].dtype),
          "spectrogram": list(last["spectrogram"].shape[1:]),
          "spectrogram_dtype": str(last["spectrogram"].dtype),
          "examples_per_s": round(n / wall, 1), "cpu_ms_per_example": round(cpu_ms, 3),
          "main_cpu_ms_per_example": round(1e3 * main_cpu / n, 3),
          "worker_cpu_ms_per_example": round(1e3 * worker_cpu / n, 3),
          "examples_per_cpu_s": round(1e3 / cpu_ms, 1), "cpus": os.cpu_count()}


# ---------------------------------------------------------------------------
# Stages: CPU per example of each stage, old path and current path
# ---------------------------------------------------------------------------

def _stage(fn, n: int, reps: int):
  """`(median CPU ms per item over reps runs of fn(), fn's last result)`."""
  times, result = [], None
  for _ in range(reps):
    t0 = time.process_time()
    result = fn()
    times.append(time.process_time() - t0)
  return round(1e3 * statistics.median(times) / n, 4), result


def stages(source, batch: int, reps: int = 5) -> list[dict]:
  import jax
  import tensorflow_datasets as tfds
  from jax.sharding import PartitionSpec as P
  from soundloc_jax import distributed, input_pipeline as ip
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  n = batch
  features = source.dataset_info.features
  skip = {"image": tfds.decode.SkipDecoding()}
  rngs = lambda: [np.random.default_rng([0, 1, p]) for p in range(n)]

  def put(b, keys):
    jax.block_until_ready(distributed.global_batch(b, mesh, P("data"), keys=keys))

  read, raw = _stage(lambda: [source.data_source[i] for i in range(n)], n, reps)
  parse, parsed = _stage(lambda: [features.deserialize_example_np(r, decoders=skip)
                                  for r in raw], n, reps)
  # 1dea26c: TFDS decodes the whole example; preprocess -> augment_image
  # (a no-op bicubic resize, crop, flip), uint8 copy, float32 spectrogram;
  # grain stacks the examples; image + float32 spectrogram go to the device.
  decode_all, full = _stage(lambda: [features.deserialize_example_np(r) for r in raw], n, reps)
  crop_old, crops = _stage(lambda: [
      np.ascontiguousarray(ip.augment_image(ex["image"], IMAGE_SIZE, rng), dtype=np.uint8)
      for ex, rng in zip(full, rngs())], n, reps)
  spec_old, specs = _stage(lambda: [np.asarray(ex["spectrogram"], np.float32) for ex in full],
                           n, reps)
  batch_old, stacked = _stage(lambda: {"image": np.stack(crops), "spectrogram": np.stack(specs)},
                              n, reps)
  transfer_old, _ = _stage(lambda: put(stacked, ("image", "spectrogram")), n, reps)
  out = [{"benchmark": "stages", "path": "per-example", "examples": n, "read": read,
          "parse": parse, "decode": round(decode_all - parse, 4), "crop_flip": crop_old,
          "spectrogram": spec_old, "batching": batch_old, "transfer": transfer_old}]
  if hasattr(ip, "BatchLoader"):
    # Current: image left encoded by TFDS, decoded once per frame (JFIF:
    # without the colour conversion), cropped in C, colour conversion and
    # flip on the device; spectrogram copied as stored into the batch.
    def decode_frames(ycbcr):
      frames = [ip.open_frame(ex["image"]) for ex in parsed]
      for f in frames:
        if ycbcr and hasattr(ip, "_decode_to_ycbcr"):
          ip._decode_to_ycbcr(f)  # pylint: disable=protected-access
        f.load()
      return frames

    decode_rgb, _ = _stage(lambda: decode_frames(False), n, reps)
    decode, frames = _stage(lambda: decode_frames(True), n, reps)
    # The YCbCr saving is small next to the noise: 30 paired runs, the order
    # alternated, nothing kept between them.
    saving = []
    for k in range(30):
      timed = {y: _stage(lambda y=y: decode_frames(y) and None, n, 1)[0]
               for y in ((False, True) if k % 2 else (True, False))}
      saving.append(timed[False] - timed[True])
    crop, views = _stage(lambda: [ip.train_view(f, IMAGE_SIZE, True, rng)
                                  for f, rng in zip(frames, rngs())], n, reps)

    def fill():
      image = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
      spec = np.empty((n,) + parsed[0]["spectrogram"].shape, parsed[0]["spectrogram"].dtype)
      for r, (view, ex) in enumerate(zip(views, parsed)):
        image[r], spec[r] = view[0], ex["spectrogram"]
      return {"image": image, "spectrogram": spec, "flip": np.asarray([v[1] for v in views]),
              "ycbcr": np.asarray([v[-1] for v in views])}

    batching, stacked = _stage(fill, n, reps)
    transfer, _ = _stage(lambda: put(stacked, ip.DEVICE_KEYS), n, reps)

    def to_shared_memory():  # what grain does with a batch a worker process built
      import grain
      for key in ("image", "spectrogram"):
        shm = grain.multiprocessing.SharedMemoryArray(stacked[key].shape, stacked[key].dtype)
        shm[...] = stacked[key]
        shm.unlink_on_del()
        del shm

    worker_transport, _ = _stage(to_shared_memory, n, reps)
    sampler = ip.EpochSampler(len(source), n, 0)
    loader = ip.BatchLoader(source, sampler, seed=0, image_size=IMAGE_SIZE, augment=True,
                            local_batch=n, process_index=0)
    total, _ = _stage(lambda: loader(0), n, reps)
    out.append({"benchmark": "stages", "path": "batch", "examples": n, "read": read,
                "parse": parse, "decode": decode, "decode_with_rgb_conversion": decode_rgb,
                "ycbcr_decode_saving": round(statistics.median(saving), 4),
                "ycbcr_decode_saving_runs_positive": sum(x > 0 for x in saving),
                "crop_flip": crop, "spectrogram": 0.0, "batching": batching,
                "transfer": transfer, "loader": total,
                "worker_transport": worker_transport})
  for record in out:
    record["sum"] = round(sum(v for k, v in record.items() if k in (
        "read", "parse", "decode", "crop_flip", "spectrogram", "batching", "transfer")), 4)
  return out


# ---------------------------------------------------------------------------
# Overlap: the real loop with a no-op step
# ---------------------------------------------------------------------------

def overlap(data_dir: str, kind: str, workers: int, batch: int, steps: int,
            warmup_steps: int = 6) -> dict:
  import jax
  import jax.numpy as jnp
  import psutil
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  from soundloc_jax import audio, train
  from soundloc_jax.configs import default, hard_positive, iterative

  config = (hard_positive if kind == "hardpos" else iterative).get_config("")
  c = config
  c.dataset.name, c.dataset.data_dir, c.dataset.build_if_missing = "folder", data_dir, False
  c.dataset.image_size, c.dataset.augment = IMAGE_SIZE, True
  if "worker_processes" in c.dataset:
    c.dataset.worker_processes = workers
  c.dataset.test_splits = ()
  c.audio = default.audio_config(audio.LVS_TRAIN)
  c.model.width = 4          # the model only initialises the state; the step is a no-op
  c.batch_size = batch
  c.num_epochs, c.max_steps = 100, steps
  c.log_every_steps = 4
  c.eval.every_epochs, c.eval.num_overlays = 0, 1
  c.evals.validation = ("retrieval",)
  c.checkpoint.best_metric = ""
  if kind == "hardpos":
    c.method.neighbours = "random"

  def noop_train_step(graphdef, method, method_config, optimizer, teacher_active, mesh=None,
                      skip_nonfinite=False):
    del graphdef, method_config, optimizer, teacher_active, skip_nonfinite

    def step_fn(state, batch):
      # One element of each input: the batch is transferred and sharded as
      # for the real step, but the device does (almost) nothing, which on a
      # CPU backend would otherwise take the host's cores.
      touched = sum(jnp.ravel(x)[0].astype(jnp.float32) for x in batch.values())
      return dict(state, step=state["step"] + 1), {"loss": touched, "grad_norm": 0 * touched}

    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    jitted = jax.jit(step_fn, donate_argnums=(0,), in_shardings=(replicated, sharded),
                     out_shardings=(replicated, replicated))

    def timed(state, batch):
      state, metrics = jitted(state, batch)  # asynchronous, as the real step
      # Clock and CPU read at the window's two ends only (psutil costs CPU).
      cpu = (time.process_time() + _children_cpu_s(proc)
             if len(calls) in (warmup_steps, steps - 1) else None)
      calls.append((time.perf_counter(), cpu))
      return state, metrics

    return timed

  proc, calls = psutil.Process(), []
  real = train.make_train_step
  train.make_train_step = noop_train_step
  try:
    with tempfile.TemporaryDirectory() as workdir:
      train.train_and_evaluate(config, workdir)
      with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rates = [r["samples_per_s"] for r in map(json.loads, f) if r.get("split") == "train"]
  finally:
    train.make_train_step = real
  # Steps after the first few (compilation, worker start-up) to the last.
  (t0, cpu0), (t1, cpu1) = calls[warmup_steps], calls[-1]
  samples = (len(calls) - 1 - warmup_steps) * batch
  return {"benchmark": "overlap", "kind": kind, "workers": workers, "batch": batch,
          "steps": steps, "samples_per_s": round(samples / (t1 - t0), 1),
          "cpu_ms_per_sample": round(1e3 * (cpu1 - cpu0) / samples, 3),
          "logged_rates": [round(r, 1) for r in rates], "cpus": os.cpu_count()}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data", default="", help="keep the built dataset here (built if missing)")
  p.add_argument("--examples", type=int, default=1024)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--kinds", default="icl,hardpos")
  p.add_argument("--workers", default="0,1,2", help="grain worker processes to try")
  p.add_argument("--steps", type=int, default=12, help="timed batches per measurement")
  p.add_argument("--repeat", type=int, default=3, help="measurements per setting")
  p.add_argument("--storage", action="store_true")
  p.add_argument("--stages", action="store_true")
  p.add_argument("--overlap", type=int, default=-1, metavar="N",
                 help="also run the training loop with a no-op step on N worker processes")
  p.add_argument("--overlap_steps", type=int, default=44)
  p.add_argument("--code", default=REPO, help="import soundloc_jax from this checkout")
  args = p.parse_args()
  sys.path.insert(0, os.path.abspath(args.code))
  if args.code != REPO:
    sys.path.insert(1, REPO)  # `tests.media_fixtures` for building the data
  import soundloc_jax
  tmp = None
  if not args.data:
    tmp = tempfile.TemporaryDirectory()
  data_dir = ensure_data(args.data or tmp.name, args.examples)
  source = open_train(data_dir)
  _emit({"benchmark": "setup", "code": os.path.dirname(os.path.dirname(soundloc_jax.__file__)),
         "examples": len(source), "cpus": os.cpu_count()})
  if args.storage:
    _emit(storage(source))
  kinds = args.kinds.split(",")
  if args.stages:
    for record in stages(source, args.batch):
      _emit(record)
  for _ in range(args.repeat):
    for kind in kinds:
      for workers in (int(w) for w in args.workers.split(",")):
        record = pipeline(source, kind, workers, args.batch, args.steps)
        if record:
          _emit(record)
  if args.overlap >= 0:
    for kind in kinds:
      _emit(overlap(data_dir, kind, args.overlap, args.batch, args.overlap_steps))


if __name__ == "__main__":
  main()
