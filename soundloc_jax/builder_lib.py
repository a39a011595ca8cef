"""Shared parts of the real-dataset builders: stored views, features, parallel preparation.

A builder (a `RealDataBuilder`) lists its examples as plain `Task`s (file
paths, a frame time, raw boxes); `prepare_all` decodes and prepares them over
N processes (`BuildOptions.num_workers`, default all cores) and yields `(id,
example)` for TFDS. Stored views: a training frame has its shorter side
resized to `TRAIN_SHORTER` = int(1.1 * 224) = 246 (bicubic), the size the
training augmentation crops 224 from, JPEG-encoded (quality 95: ~7x smaller
than raw uint8, ~2 ms to decode; benchmarks/RESULTS.md); a test frame is the
LVS test view (shorter side 224, centre crop), stored as PNG, which
`input_pipeline.eval_image` uses as is. All splits share one feature set.
Audio: every split stores `spectrogram` float16 of the config's front end
(`audio.log_spectrogram` on `clip_seconds` around the frame); test splits
also store `waveform`, the first 10 s at 16 kHz as int16 (x 32768, as the LVS
test code's `soundfile.read` sees its 16-bit wavs), for the exact LVS test
front end. A missing or corrupt media file stops the build with a
`DatasetError` naming it; with `skip_bad` (config field or
`SOUNDLOC_BUILD_SKIP_BAD=1`) it is skipped, counted, logged and listed in
`info.metadata["skipped"]`. `beam` (or `SOUNDLOC_BUILD_BEAM=1`) prepares the
examples in an Apache Beam pipeline instead (`examples`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from soundloc_jax import audio, input_pipeline, media
from soundloc_jax.errors import DatasetError, MediaError
from soundloc_jax.evaluation.annotations import GT_FORMATS

TRAIN_SHORTER = 246          # int(1.1 * 224): augment_image's resize target
TEST_SIZE = 224              # LVS test view
JPEG_QUALITY = 95
LVS_TEST_RATE = 16000
LVS_TEST_SECONDS = 10.0
PCM_SCALE = 32768.0          # int16 <-> float, as soundfile / FFmpeg convert
NUM_VALIDATION = 500
WORKERS_ENV = "SOUNDLOC_BUILD_WORKERS"
SKIP_BAD_ENV = "SOUNDLOC_BUILD_SKIP_BAD"
BEAM_ENV = "SOUNDLOC_BUILD_BEAM"


@dataclasses.dataclass(frozen=True)
class Task:
  """One example: the frame from `image` or `video` (at `frame_time`, default the
  middle), the sound from `audio` (default `video`); `test` examples get the
  test view, `waveform` and `gt_boxes` (raw `[N, 4]`); `extra` is copied as is."""
  id: str
  audio: str = ""
  image: str = ""
  video: str = ""
  frame_time: float | None = None
  test: bool = False
  gt_boxes: tuple = ()
  extra: tuple = ()                # ((key, value), ...)


# The default training front end: the LVS transform on 3 s (257 x 299), as
# HardPos (`audio.LVS_TRAIN`, which configs.default.LVS_AUDIO names too).
DEFAULT_AUDIO = audio.LVS_TRAIN


@dataclasses.dataclass(eq=False)
class RealDataConfig(tfds.core.BuilderConfig):
  """Fields every real-data builder config has. `audio`: the training front
  end (`audio.log_spectrogram` params); `num_workers`: preparation processes
  (0 = $SOUNDLOC_BUILD_WORKERS or all cores); `skip_bad`: skip and count bad
  media files instead of stopping; `num_validation`: held-out validation size
  (at most max(1, a tenth of the training examples)); `beam`: prepare with
  Apache Beam (the `[beam]` extra) instead of local processes."""
  audio: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_AUDIO))
  num_workers: int = 0
  skip_bad: bool = False
  num_validation: int = NUM_VALIDATION
  beam: bool = False


@dataclasses.dataclass(frozen=True)
class BuildOptions:
  audio: dict
  num_workers: int = 0             # 0: $SOUNDLOC_BUILD_WORKERS or all cores
  skip_bad: bool = False           # or $SOUNDLOC_BUILD_SKIP_BAD=1
  box_space: str = ""              # "original": test boxes in source pixels -> test view
  beam: bool = False               # or $SOUNDLOC_BUILD_BEAM=1: prepare with Apache Beam


def resolve_options(config: RealDataConfig, box_space: str = "") -> BuildOptions:
  """A builder config's fields, completed from the environment variables."""
  workers = (int(config.num_workers) or int(os.environ.get(WORKERS_ENV, "0") or 0)
             or (os.cpu_count() or 1))
  skip = bool(config.skip_bad) or _env_flag(SKIP_BAD_ENV)
  return BuildOptions(audio=dict(config.audio), num_workers=workers, skip_bad=skip,
                      box_space=box_space, beam=bool(config.beam) or _env_flag(BEAM_ENV))


def _env_flag(name: str) -> bool:
  return os.environ.get(name, "").lower() in ("1", "true", "yes")


log = logging.info


def train_validation_tasks(tasks: list[Task], num_validation: int) -> dict[str, list[Task]]:
  """`{"train": ..., "validation": ...}`: `validation_ids` of the tasks are
  held out (unannotated, for model selection), the rest are for training."""
  held_out = validation_ids([t.id for t in tasks], num_validation)
  log(f"{len(tasks) - len(held_out)} training and {len(held_out)} validation examples")
  return {"train": [t for t in tasks if t.id not in held_out],
          "validation": [t for t in tasks if t.id in held_out]}


def read_id_list(path) -> list[str]:
  """Ids from a list file: one per line, or the first column of a csv;
  blank lines, `#` comments and a header cell named `id`/`file` are ignored;
  a trailing media extension is dropped."""
  ids = []
  with open(path) as f:
    for line in f:
      cell = line.split("#", 1)[0].split(",", 1)[0].strip()
      stem, ext = os.path.splitext(cell)
      if ext.lower() in media.IMAGE_EXTENSIONS + media.AUDIO_EXTENSIONS + media.VIDEO_EXTENSIONS:
        cell = stem
      if cell and cell.lower() not in ("id", "file", "youtube_id"):
        ids.append(cell)
  return list(dict.fromkeys(ids))


# SLAVC's extended test lists (`flickr_test_plus_silent.csv`,
# `vggss_test_plus_silent.csv`): pairs whose sound's source is not in the frame.
OFFSCREEN_HEADER = ("video", "audio", "label")
OFFSCREEN_LABELS = {"non-sounding": True, "sounding": False}  # label -> an off-screen pair


def read_offscreen_pairs(path) -> list[tuple[str, str]]:
  """`(frame id, audio id)` of each off-screen pair of an extended test list,
  in file order, repeats dropped. The format (SLAVC's released lists): a
  header `video,audio,label`, then one row per pair: the id of the frame's
  video, the id of the sound's (another video's, or the same clip's when its
  source is not in view), and `non-sounding`; rows labelled `sounding` (the
  ordinary test pairs) are skipped. CRLF line ends, blank lines, spaces around
  cells and a media extension on an id are accepted. MediaError naming the
  file and line: a missing or wrong header, a row without three cells, an
  empty id, an unknown label."""
  path = os.fspath(path)
  pairs = []
  try:
    with open(path, newline="") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise MediaError(f"{path}: cannot read the extended test list ({type(e).__name__}: {e})") from e

  def bare(cell):
    cell = cell.strip()
    stem, ext = os.path.splitext(cell)
    return stem if ext.lower() in media.IMAGE_EXTENSIONS + media.AUDIO_EXTENSIONS + \
        media.VIDEO_EXTENSIONS else cell

  rows = [(n, [c.strip() for c in line.split(",")]) for n, line in enumerate(lines, 1)
          if line.strip()]
  if not rows or tuple(c.lower() for c in rows[0][1]) != OFFSCREEN_HEADER:
    got = ",".join(rows[0][1]) if rows else "an empty file"
    raise MediaError(f"{path}: line {rows[0][0] if rows else 1}: expected the header "
                     f"{','.join(OFFSCREEN_HEADER)!r}, got {got!r}")
  for n, cells in rows[1:]:
    if len(cells) != 3 or not cells[0] or not cells[1]:
      raise MediaError(f"{path}: line {n}: expected 'video,audio,label' (two ids and a label), "
                       f"got {','.join(cells)!r}")
    label = cells[2].lower()
    if label not in OFFSCREEN_LABELS:
      raise MediaError(f"{path}: line {n}: unknown label {cells[2]!r}; expected one of "
                       f"{', '.join(OFFSCREEN_LABELS)}")
    if OFFSCREEN_LABELS[label]:
      pairs.append((bare(cells[0]), bare(cells[1])))
  return list(dict.fromkeys(pairs))


def offscreen_id(video: str, audio: str) -> str:
  """The example id of an off-screen pair: both ids (one frame may be paired
  with several sounds, and each differs from the frame's own test id)."""
  return f"{video}__{audio}"


def find_file(folder, stem: str, extensions) -> str:
  """`folder/stem.ext` for the first extension that exists, else ''."""
  for ext in extensions:
    path = os.path.join(folder, stem + ext)
    if os.path.exists(path):
      return path
  return ""


# ----------------------------------------------------------------------------
# Features and metadata.

def features(audio_params: dict, extra: dict | None = None):
  """TFDS features, the same for every split (TFDS has one set per dataset):
  `image` holds encoded bytes as given (JPEG for train/validation frames,
  lossless PNG for the test view), `waveform` and `gt_boxes` are empty
  outside test splits."""
  spec_shape = audio.spectrogram_shape(audio_params)
  raw = tfds.features.Encoding.BYTES  # else uint8 / float16 are widened to int64 / float32
  feats = {
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format=None),
      "spectrogram": tfds.features.Tensor(shape=spec_shape, dtype=np.float16, encoding=raw),
      "waveform": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding=raw),
      "gt_boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
      "id": tfds.features.Text(),
  }
  feats.update(extra or {})
  return tfds.features.FeaturesDict(feats)


def metadata(audio_params: dict, *, gt_format: str, **more):
  """`info.metadata`: front end (`audio`, checked by training), views, gt format, extras."""
  if gt_format not in GT_FORMATS:
    raise ValueError(f"gt_format {gt_format!r} not in {GT_FORMATS}")
  return tfds.core.MetadataDict(
      audio=audio.params_dict(audio_params), image_size=TEST_SIZE, train_shorter_side=TRAIN_SHORTER,
      test_waveform=dict(sample_rate=LVS_TEST_RATE, seconds=LVS_TEST_SECONDS, scale=PCM_SCALE),
      gt_format=gt_format, skipped=[], **more)


def validation_ids(ids: Iterable[str], num_validation: int = NUM_VALIDATION) -> set[str]:
  """The `min(num_validation, max(1, len(ids) // 10))` ids with the smallest SHA-1
  of the id text: deterministic, independent of order and of the other ids."""
  ids = sorted(set(ids))
  if len(ids) < 2:
    raise DatasetError(f"{len(ids)} training example(s): need at least 2 (one is held out "
                       "for validation)")
  k = min(int(num_validation), max(1, len(ids) // 10))
  return set(sorted(ids, key=lambda i: hashlib.sha1(i.encode()).hexdigest())[:k])


# ----------------------------------------------------------------------------
# Per-example preparation (runs in worker processes).

def train_frame(image: np.ndarray) -> np.ndarray:
  """Stored training frame: shorter side to 246, bicubic."""
  return input_pipeline._resize_shorter(image, TRAIN_SHORTER)  # pylint: disable=protected-access


def test_frame(image: np.ndarray) -> np.ndarray:
  """Stored test frame: the LVS test view (shorter side 224, centre crop)."""
  return input_pipeline.center_crop_resize(image, TEST_SIZE)


def box_to_test_view(boxes, height: int, width: int) -> np.ndarray:
  """Pixel boxes `[N, 4]` (x0, y0, x1, y1, half-open) of an `height` x `width`
  image -> the same boxes in pixels of its test view (resize + centre crop),
  clipped to `[0, 224]`."""
  rh, rw = input_pipeline.resized_shape(height, width, TEST_SIZE)
  top, left = (rh - TEST_SIZE) // 2, (rw - TEST_SIZE) // 2
  b = np.asarray(boxes, np.float64).reshape(-1, 4)
  sx, sy = rw / width, rh / height
  out = np.stack([b[:, 0] * sx - left, b[:, 1] * sy - top, b[:, 2] * sx - left,
                  b[:, 3] * sy - top], axis=-1)
  return np.clip(out, 0, TEST_SIZE).astype(np.float32)


def encode_image(image: np.ndarray, fmt: str) -> bytes:
  """JPEG (quality 95) or PNG bytes of an RGB uint8 image."""
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format=fmt, **({"quality": JPEG_QUALITY} if fmt == "JPEG" else {}))
  return buf.getvalue()


def to_pcm16(waveform: np.ndarray) -> np.ndarray:
  return np.clip(np.round(np.asarray(waveform) * PCM_SCALE), -32768, 32767).astype(np.int16)


def prepare(task: Task, options: BuildOptions) -> dict:
  """Decodes one task's files into a TFDS example (numpy values)."""
  if task.image:
    frame = media.read_image(task.image)
    frame_time = None
  else:
    frame = media.read_video_frame(task.video, task.frame_time)
    frame_time = task.frame_time
  audio_path = task.audio or task.video
  clip = float(options.audio["clip_seconds"])
  # Decoded at the front end's rate by FFmpeg's resampler (as the peers'
  # pre-extracted 16 kHz wavs were made), so log_spectrogram need not resample.
  wave, rate = media.read_audio(audio_path, sample_rate=int(options.audio["sample_rate"]))
  # The training clip: `clip` seconds around the frame time (a still image:
  # around the middle of the audio), shifted to fit inside the audio.
  window = audio.window_around(wave, rate, frame_time, clip)
  spec = audio.log_spectrogram(window, rate, options.audio)
  if not np.all(np.isfinite(spec)):
    raise MediaError(f"{audio_path}: audio gives a non-finite spectrogram")
  example = {"id": task.id, "spectrogram": spec.astype(np.float16)}
  if task.test:
    example["image"] = encode_image(test_frame(frame), "PNG")
    if rate != LVS_TEST_RATE:
      wave, rate = media.read_audio(audio_path, sample_rate=LVS_TEST_RATE)
    lvs = wave[:int(LVS_TEST_RATE * LVS_TEST_SECONDS)]
    example["waveform"] = to_pcm16(lvs)
    boxes = np.asarray(task.gt_boxes, np.float32).reshape(-1, 4)
    if options.box_space == "original" and boxes.size:
      boxes = box_to_test_view(boxes, frame.shape[0], frame.shape[1])
    example["gt_boxes"] = boxes
  else:
    example["image"] = encode_image(train_frame(frame), "JPEG")
    example["waveform"] = np.zeros((0,), np.int16)
    example["gt_boxes"] = np.zeros((0, 4), np.float32)
  example.update(dict(task.extra))
  return example


def _prepare_or_error(args):
  task, options = args
  try:
    return task.id, prepare(task, options), None
  except DatasetError as e:
    return task.id, None, str(e)


# ----------------------------------------------------------------------------
# Parallel driver.

def _context():
  """fork (workers inherit the imported modules) unless a JAX backend is up in
  this process (its threads make fork unsafe): then forkserver, preloaded."""
  methods = multiprocessing.get_all_start_methods()
  jax_running = False
  if "jax" in sys.modules:
    try:
      from jax._src import xla_bridge
      jax_running = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):
      jax_running = True
  if "fork" in methods and not jax_running:
    return multiprocessing.get_context("fork")
  if "forkserver" in methods:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context
  return multiprocessing.get_context("spawn")


def prepare_all(tasks: list[Task], options: BuildOptions, skipped: list,
                log=None) -> Iterator[tuple[str, dict]]:
  """`(id, example)` for every task, prepared on `options.num_workers`
  processes (in-process for 1). A bad file raises `DatasetError` naming it,
  or with `skip_bad` is appended to `skipped` as `{"id", "error"}` and logged."""
  jobs = [(t, options) for t in tasks]
  workers = min(options.num_workers, max(len(jobs), 1))
  pool = None
  if workers <= 1:
    results = map(_prepare_or_error, jobs)
  else:  # an executor, not Pool: stopping on a bad file cancels what has not started
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=_context())
    results = (f.result() for f in concurrent.futures.as_completed(
        [pool.submit(_prepare_or_error, job) for job in jobs]))
  try:
    for key, example, error in results:
      if error is None:
        yield key, example
      elif options.skip_bad:
        skipped.append({"id": key, "error": error})
        if log:
          log(f"skipped {key}: {error}")
      else:
        raise DatasetError(f"{error} (example {key!r}; set skip_bad=True in the builder config "
                           f"or {SKIP_BAD_ENV}=1 to skip bad files and count them)")
  finally:  # Pool.terminate() here hung once under load (a test, 2026-12-01)
    if pool is not None:
      pool.shutdown(wait=True, cancel_futures=True)


def scan_folder(manual_dir: str) -> tuple[list[Task], list[Task], list[str]]:
  """`(unannotated tasks, annotated test tasks, problems)` of a flat folder of
  `<id>.jpg|png` + `<id>.wav|flac|mp4|...` (+ `<id>.json` boxes in pixels of the
  original image), the layout of the `folder` and `music_synthetic` builders."""
  manual_dir = os.fspath(manual_dir)
  stems: dict[str, list[str]] = {}
  for name in sorted(os.listdir(manual_dir)):
    stem, ext = os.path.splitext(name)
    stems.setdefault(stem, []).append(ext.lower())
  sounds = media.AUDIO_EXTENSIONS + media.VIDEO_EXTENSIONS
  train, test, problems = [], [], []
  for stem, exts in stems.items():
    if not any(e in media.IMAGE_EXTENSIONS + sounds + (".json",) for e in exts):
      continue  # unrelated files (README, lists, ...)
    path = lambda ext: os.path.join(manual_dir, stem + ext)  # noqa: E731
    image = next((path(e) for e in media.IMAGE_EXTENSIONS if e in exts), "")
    sound = next((path(e) for e in sounds if e in exts), "")
    video = sound if sound.endswith(media.VIDEO_EXTENSIONS) else ""
    if not sound:
      problems.append(f"{path(exts[0])}: no sound file {stem}.wav|.flac|.mp4|... next to it")
      continue
    if not image and not video:
      problems.append(f"{sound}: no image {stem}.jpg|.png and not a video")
      continue
    task = dict(id=stem, audio=sound, image=image, video="" if image else video)
    if ".json" in exts:
      test.append(Task(**task, test=True, gt_boxes=read_boxes(path(".json"))))
    else:
      train.append(Task(**task))
  return train, test, problems


def read_boxes(path: str) -> tuple:
  """Boxes of a `<id>.json`: `{"boxes": [[x0, y0, x1, y1], ...]}` or the bare list."""
  try:
    with open(path) as f:
      data = json.load(f)
    boxes = data["boxes"] if isinstance(data, dict) else data
    boxes = [tuple(float(v) for v in b) for b in boxes]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise MediaError(f"{path}: expected {{\"boxes\": [[x0, y0, x1, y1], ...]}} "
                     f"({type(e).__name__}: {e})") from e
  if any(len(b) != 4 for b in boxes):
    raise MediaError(f"{path}: every box needs 4 numbers [x0, y0, x1, y1]")
  return tuple(boxes)


def examples(tasks: list[Task], options: BuildOptions, skipped: list):
  """What a builder's `_generate_examples` returns: a generator over
  `prepare_all`, or with `options.beam` a Beam transform
  (`beam.Create(tasks) | beam.FlatMap(...)`) that TFDS runs on the pipeline
  given by `--beam_pipeline_options` / `DownloadConfig(beam_options=...)`."""
  if not options.beam:
    return prepare_all(tasks, options, skipped, log)
  try:
    import apache_beam as beam
  except ImportError as e:
    raise DatasetError("beam=True / SOUNDLOC_BUILD_BEAM=1 needs Apache Beam: "
                       "pip install 'soundloc_jax[beam]'") from e
  return (beam.Create(list(tasks))
          | beam.FlatMap(_beam_prepare, options=options))


def _beam_prepare(task: Task, options: BuildOptions):
  """Beam worker: `(id, example)`; a bad file raises, or with `skip_bad` is logged
  and counted in the Beam counter `soundloc/skipped` (the pipeline's metrics;
  `info.metadata["skipped"]` lists skips only for builds without Beam)."""
  key, example, error = _prepare_or_error((task, options))
  if error is None:
    yield key, example
  elif options.skip_bad:
    import apache_beam as beam
    beam.metrics.Metrics.counter("soundloc", "skipped").inc()
    log(f"skipped {key}: {error}")
  else:
    raise DatasetError(f"{error} (example {key!r}; set skip_bad=True or {SKIP_BAD_ENV}=1 to "
                       "skip bad files and count them)")


class RealDataBuilder(tfds.core.GeneratorBasedBuilder):
  """Version, `features` (+ `extra_features()`), `metadata` (`GT_FORMAT`,
  `extra_metadata()`) and `examples` of every real-data builder; a builder
  adds its configs and `_split_generators` -> `{split:
  self._generate_examples(tasks, options)}`. Abstract: TFDS does not register it."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  GT_FORMAT = ""
  HOMEPAGE = None

  def extra_features(self) -> dict:
    return {}

  def extra_metadata(self) -> dict:
    return {}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        features=features(cfg.audio, self.extra_features()), homepage=self.HOMEPAGE,
        metadata=metadata(cfg.audio, gt_format=self.GT_FORMAT, **self.extra_metadata()))

  def _generate_examples(self, tasks, options):
    return examples(tasks, options, self.info.metadata["skipped"])


def skip_problems(problems, name: str, manual_dir, layout: str, options: BuildOptions,
                  skipped: list) -> None:
  """Problems of a manual_dir (lines starting with the file's path, or `(id, line)`):
  without `options.skip_bad` the first is `missing_files_error`; with it, each
  is appended to `skipped` as `{"id", "error"}` and logged."""
  for problem in problems:
    ident, text = problem if isinstance(problem, tuple) else (
        os.path.splitext(os.path.basename(problem.split(":")[0]))[0], problem)
    if not options.skip_bad:
      raise missing_files_error(name, manual_dir, layout, text)
    skipped.append({"id": ident, "error": text})
    log(f"skipped: {text}")


def missing_files_error(name: str, manual_dir, layout: str, what: str) -> DatasetError:
  """The error for a manual_dir that lacks required files: repeats the layout."""
  return DatasetError(f"{name}: {what} in manual_dir {os.fspath(manual_dir)!r}. Expected layout: "
                      + " ".join(layout.split()))
