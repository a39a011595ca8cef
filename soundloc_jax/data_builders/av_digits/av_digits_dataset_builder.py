"""`av_digits`: a tiny, fully synthetic audio-visual localization dataset.

Generated offline and deterministically from scikit-learn's bundled
handwritten digits (`sklearn.datasets.load_digits()`: 1797 8x8 images, 10
classes) and a small bank of synthesized "instruments", one per digit class.
Nothing is downloaded; building all 5000 examples takes ~15 s on 2 CPU cores
(~88 MB of array_record).

Layout of one example
---------------------
* ``image``: RGB uint8 ``[64, 64, 3]``, a 2x2 grid of 32x32 cells (row-major
  cell index ``r * 2 + c`` covers ``image[32r:32r+32, 32c:32c+32]``). 2 to 4
  cells each hold one digit, all of *distinct* classes; the others are empty.
  A digit is its 8x8 image upscaled to the full 32x32 cell (PIL bilinear) and
  alpha-blended in a random bright colour over a dark noise background
  (uniform 0..40 per channel, so empty cells are not trivially black).
* ``label``: the class of the one *sounding* digit (random among present ones).
* ``box``: float32 ``[x0, y0, x1, y1]`` in pixels of the 64x64 image, the
  sounding digit's cell, half-open like numpy slicing ``image[y0:y1, x0:x1]``
  (e.g. ``[32, 0, 64, 32]`` for the top-right cell).
* ``present``: int64 ``[4]``, the class in each cell (row-major), -1 if empty.
* ``spectrogram``: float16 ``[64, 63]``,
  ``soundloc_jax.audio.log_spectrogram(waveform, 16000, DEMO_AUDIO)`` of a
  0.5 s, 16 kHz waveform whose content identifies the sounding class: one
  instrument per class (its own fundamental, harmonic timbre, amplitude
  modulation and vibrato), with a random pitch shift of +-4%, onset 0..0.15 s,
  duration 0.25..0.35 s, 10 ms fades, Gaussian background noise at an SNR of
  5..20 dB and a peak of 0.45..0.9. Values lie in about [-1.0, 0.5] (the
  full build: -0.978 .. 0.461; the front end's floor is log(1e-7)/12 = -1.34),
  well inside float16 range; the float32 front-end output is stored as
  float16 (relative error <= 2**-11).
* ``id``: text, ``"<split>_<index:06d>"``.

Why cells are aligned to stride 16
----------------------------------
The localization models use a stride-16 backbone, so a 64x64 image gives a
4x4 feature map and every 32x32 cell is exactly 2x2 feature cells: a perfect
model can point at the sounding cell at its own resolution, and the box edges
fall on feature-cell boundaries rather than inside them. Concretely, the
oracle map (1 on the box's 2x2 feature cells, 0 elsewhere):
* upsampled by nearest neighbour (x16) reproduces the box exactly (cIoU 1);
* upsampled bilinearly with half-pixel centres (`jax.image.resize(...,
  "bilinear")`, OpenCV `INTER_LINEAR`) and thresholded at 0.5 is exact along
  every box edge (1-D interpolation crosses 0.5 exactly at the cell border)
  and never spills outside the box, but misses 23 of the 1024 pixels in the
  box corner that points into the image centre, where the interpolated value
  is a product of two weights < 1: cIoU = 1001/1024 = 0.9775. No 4x4 map can
  do better there (a bilinear patch cannot have a right-angled 0.5 level
  set), so read ~0.98, not 1.0, as "perfect" for that post-processing.
(The LVS "median" post-processing, which keeps the top half of the pixels,
caps cIoU at 0.5 on this data, since a box covers a quarter of the image.)

Splits and determinism
----------------------
train 4000, validation 500, test 500 (all with boxes). Digit images come from a
fixed partition of the 1797: per class (in index order) train uses the first
60%, validation the next 20%, test the last 20%, so test digits are unseen.
Every example is drawn from its own RNG seeded with ``(SEED, split, index)``,
so it does not depend on generation order or on the other split sizes.

Small builds for tests
----------------------
Configs are ``full`` (4000/500/500) and ``small_TRAIN_VALIDATION_TEST`` (e.g.
``small_40_10_10``). The config name is part of the on-disk path
(``<data_dir>/av_digits/<config>/1.0.0``), so a reduced build is never
mistaken for the full one. Example ``i`` of a split is identical in both (same
RNG); only the number of examples differs. The class's only (hence default)
config is ``full``, or the small one given by the environment variable
``SOUNDLOC_AV_DIGITS_SIZES=TRAIN,VALIDATION,TEST`` (e.g. ``40,10,10``) as it
is when this module is first imported; that is what
``python -m soundloc_jax.tfds_build data_builders/av_digits`` builds.
``soundloc_jax.demo_data.ensure_built`` reads the variable at call time, and
builds any ``av_digits/small_...`` named explicitly.

The audio front-end parameters, image layout and split sizes are stored in the
dataset metadata (``info.metadata``: ``audio``, ``image_size``, ``grid``,
``cell_size``, ``num_classes``, ``sizes``) so training can check them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from soundloc_jax import audio

# ----------------------------------------------------------------------------
# Constants.

SEED = 20240917
# The audio front end of the stored spectrograms (`soundloc_jax.audio.DEMO`,
# kind "log_mel"). Shape [N_MELS, 1 + CLIP_SAMPLES // HOP].
DEMO_AUDIO = audio.DEMO
SAMPLE_RATE = DEMO_AUDIO["sample_rate"]
CLIP_SECONDS = DEMO_AUDIO["clip_seconds"]
CLIP_SAMPLES = int(round(SAMPLE_RATE * CLIP_SECONDS))  # 8000
SPEC_SHAPE = (64, 63)

IMAGE_SIZE = 64            # image is IMAGE_SIZE x IMAGE_SIZE RGB
GRID = 2                   # GRID x GRID cells
CELL_SIZE = IMAGE_SIZE // GRID  # 32 = 2 feature cells of a stride-16 backbone
NUM_CELLS = GRID * GRID
NUM_CLASSES = 10
MIN_DIGITS, MAX_DIGITS = 2, 4
BACKGROUND_MAX = 40        # background noise: uniform 0..BACKGROUND_MAX

SPLITS = ("train", "validation", "test")
FULL_SIZES = {"train": 4000, "validation": 500, "test": 500}
# Fractions of each class's digit images (in index order) used by each split.
DIGIT_PARTITION = {"train": (0.0, 0.6), "validation": (0.6, 0.8), "test": (0.8, 1.0)}

SIZES_ENV = "SOUNDLOC_AV_DIGITS_SIZES"

# One "instrument" per class: fundamental (Hz), harmonic amplitudes (harmonic
# k = index + 1), amplitude modulation (rate Hz, depth 0..1), vibrato (rate
# Hz, depth as a fraction of f0). Fundamentals are 3 semitones (19%) apart,
# more than the +-4% random pitch shift, and neighbours differ in timbre too.
INSTRUMENTS = (
    dict(f0=196.0, harmonics=(1.0, 0.5, 0.33, 0.25, 0.2, 0.17, 0.14, 0.12), am=(0.0, 0.0), vibrato=(0.0, 0.0)),
    dict(f0=233.1, harmonics=(1.0, 0.0, 0.33, 0.0, 0.2, 0.0, 0.14), am=(6.0, 0.6), vibrato=(0.0, 0.0)),
    dict(f0=277.2, harmonics=(1.0,), am=(0.0, 0.0), vibrato=(5.0, 0.02)),
    dict(f0=329.6, harmonics=(0.3, 1.0, 0.2, 0.6), am=(12.0, 0.8), vibrato=(0.0, 0.0)),
    dict(f0=392.0, harmonics=(1.0, 0.7, 0.5, 0.35, 0.25), am=(0.0, 0.0), vibrato=(6.0, 0.015)),
    dict(f0=466.2, harmonics=(0.4, 0.3, 1.0, 0.3), am=(4.0, 0.5), vibrato=(0.0, 0.0)),
    dict(f0=554.4, harmonics=(1.0, 0.1), am=(9.0, 0.9), vibrato=(0.0, 0.0)),
    dict(f0=659.3, harmonics=(1.0, 0.0, 0.5, 0.0, 0.3), am=(0.0, 0.0), vibrato=(0.0, 0.0)),
    dict(f0=784.0, harmonics=(1.0, 0.6, 0.3), am=(15.0, 0.4), vibrato=(4.0, 0.01)),
    dict(f0=932.3, harmonics=(1.0, 0.2, 0.4), am=(0.0, 0.0), vibrato=(7.0, 0.03)),
)
assert len(INSTRUMENTS) == NUM_CLASSES


def sizes_from_env() -> dict[str, int] | None:
  """Split sizes from $SOUNDLOC_AV_DIGITS_SIZES (`TRAIN,VALIDATION,TEST`), or None."""
  value = os.environ.get(SIZES_ENV, "").strip()
  if not value:
    return None
  try:
    parts = [int(p) for p in value.split(",")]
  except ValueError:
    parts = []
  if len(parts) != 3 or min(parts) < 1:
    raise ValueError(f"{SIZES_ENV}={value!r}: expected three positive integers "
                     "TRAIN,VALIDATION,TEST, e.g. 40,10,10")
  return dict(zip(SPLITS, parts))


def config_name_for_sizes(sizes: dict[str, int]) -> str:
  """`"full"` for FULL_SIZES, else `"small_<train>_<validation>_<test>"`."""
  if dict(sizes) == FULL_SIZES:
    return "full"
  return "small_" + "_".join(str(int(sizes[s])) for s in SPLITS)


# ----------------------------------------------------------------------------
# Generation (pure numpy / PIL / librosa; no TFDS state).


def cell_box(cell: int) -> np.ndarray:
  """Half-open pixel box `[x0, y0, x1, y1]` of a row-major cell index."""
  r, c = divmod(int(cell), GRID)
  return np.array([c * CELL_SIZE, r * CELL_SIZE, (c + 1) * CELL_SIZE, (r + 1) * CELL_SIZE],
                  dtype=np.float32)


_DIGITS_CACHE: dict = {}


def _load_digits_fast() -> tuple[np.ndarray, np.ndarray] | None:
  """scikit-learn's bundled `digits.csv.gz`, read without importing sklearn.

  `import sklearn` takes seconds; the file is what `load_digits()` reads (64
  pixel columns 0..16, then the class). None if it is not where expected.
  """
  import gzip
  import importlib.util
  spec = importlib.util.find_spec("sklearn")  # locates, does not import
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
  if not os.path.exists(path):
    return None
  with gzip.open(path, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.float64)
  if table.shape != (1797, 65):
    return None
  return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)


def _digits():
  """(images uint8 [1797, 8, 8] scaled to 0..255, targets [1797]).

  Exactly `sklearn.datasets.load_digits()`'s `images` (0..16, scaled by
  255/16) and `target` (the tests check the fast reader against it).
  """
  if "data" not in _DIGITS_CACHE:
    loaded = _load_digits_fast()
    if loaded is None:
      from sklearn.datasets import load_digits  # bundled with scikit-learn, no download
      d = load_digits()
      loaded = (d.images, d.target.astype(np.int64))
    images, targets = loaded
    images = np.clip(np.round(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    _DIGITS_CACHE["data"] = (images, targets)
  return _DIGITS_CACHE["data"]


def digit_indices(split: str) -> list[np.ndarray]:
  """Per class, the indices into `load_digits()` that `split` draws from."""
  _, targets = _digits()
  lo, hi = DIGIT_PARTITION[split]
  out = []
  for k in range(NUM_CLASSES):
    idx = np.flatnonzero(targets == k)
    n = len(idx)
    out.append(idx[int(round(lo * n)):int(round(hi * n))])
  return out


def _upscaled_digit(index: int) -> np.ndarray:
  """Digit `index` upscaled to CELL_SIZE x CELL_SIZE, float alpha in [0, 1]."""
  key = ("up", int(index))
  if key not in _DIGITS_CACHE:
    from PIL import Image
    images, _ = _digits()
    im = Image.fromarray(images[index], mode="L").resize((CELL_SIZE, CELL_SIZE),
                                                         Image.Resampling.BILINEAR)
    _DIGITS_CACHE[key] = np.asarray(im, dtype=np.float32) / 255.0
  return _DIGITS_CACHE[key]


def _bright_colour(rng: np.random.Generator) -> np.ndarray:
  """A random saturated, bright RGB colour (0..255 float)."""
  import colorsys
  h = rng.uniform(0.0, 1.0)
  s = rng.uniform(0.45, 1.0)
  v = rng.uniform(0.85, 1.0)
  return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255.0


def synth_waveform(label: int, rng: np.random.Generator) -> np.ndarray:
  """0.5 s, 16 kHz float32 waveform of class `label`'s instrument."""
  inst = INSTRUMENTS[int(label)]
  sr = SAMPLE_RATE
  f0 = inst["f0"] * rng.uniform(0.96, 1.04)
  onset = int(round(rng.uniform(0.0, 0.15) * sr))
  length = int(round(rng.uniform(0.25, 0.35) * sr))
  length = min(length, CLIP_SAMPLES - onset)
  t = np.arange(length, dtype=np.float64) / sr
  vib_rate, vib_depth = inst["vibrato"]
  freq = f0 * (1.0 + vib_depth * np.sin(2 * np.pi * vib_rate * t + rng.uniform(0, 2 * np.pi)))
  phase = 2 * np.pi * np.cumsum(freq) / sr + rng.uniform(0, 2 * np.pi)
  tone = np.zeros(length, dtype=np.float64)
  for k, amp in enumerate(inst["harmonics"], start=1):
    if amp > 0 and k * f0 * (1 + vib_depth) < 0.45 * sr:
      tone += amp * np.sin(k * phase)
  am_rate, am_depth = inst["am"]
  if am_depth > 0:
    tone *= 1.0 - am_depth * (0.5 - 0.5 * np.cos(2 * np.pi * am_rate * t))
  fade = min(int(0.01 * sr), length // 2)
  ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
  tone[:fade] *= ramp
  tone[length - fade:] *= ramp[::-1]
  signal_power = float(np.mean(tone ** 2))
  snr_db = rng.uniform(5.0, 20.0)
  noise_std = np.sqrt(signal_power / 10 ** (snr_db / 10))
  x = rng.normal(0.0, noise_std, CLIP_SAMPLES)
  x[onset:onset + length] += tone
  peak = rng.uniform(0.45, 0.9)
  x *= peak / max(float(np.max(np.abs(x))), 1e-9)
  return x.astype(np.float32)


def make_example(split: str, index: int) -> dict:
  """Example `index` of `split`, as plain numpy values (the TFDS features)."""
  split_id = SPLITS.index(split)
  rng = np.random.default_rng([SEED, split_id, int(index)])
  pools = _split_pools(split)
  num = int(rng.integers(MIN_DIGITS, MAX_DIGITS + 1))
  cells = rng.choice(NUM_CELLS, size=num, replace=False)
  classes = rng.choice(NUM_CLASSES, size=num, replace=False)
  image = rng.integers(0, BACKGROUND_MAX + 1, size=(IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  present = np.full((NUM_CELLS,), -1, dtype=np.int64)
  for cell, cls in zip(cells, classes):
    digit = int(rng.choice(pools[int(cls)]))
    alpha = _upscaled_digit(digit)[..., None]
    colour = _bright_colour(rng)
    r, c = divmod(int(cell), GRID)
    sl = (slice(r * CELL_SIZE, (r + 1) * CELL_SIZE), slice(c * CELL_SIZE, (c + 1) * CELL_SIZE))
    image[sl] = image[sl] * (1.0 - alpha) + colour * alpha
    present[int(cell)] = int(cls)
  sounding = int(rng.integers(num))
  label = int(classes[sounding])
  waveform = synth_waveform(label, rng)
  spec = audio.log_spectrogram(waveform, SAMPLE_RATE, DEMO_AUDIO)
  if spec.shape != SPEC_SHAPE:
    raise AssertionError(f"spectrogram shape {spec.shape} != {SPEC_SHAPE}")
  if not np.all(np.isfinite(spec)) or np.max(np.abs(spec)) > 60000:
    raise AssertionError("spectrogram does not fit float16")
  return {
      "image": np.clip(np.round(image), 0, 255).astype(np.uint8),
      "spectrogram": spec.astype(np.float16),
      "id": f"{split}_{int(index):06d}",
      "label": label,
      "box": cell_box(int(cells[sounding])),
      "present": present,
  }


def _split_pools(split: str) -> list[np.ndarray]:
  key = ("pools", split)
  if key not in _DIGITS_CACHE:
    _DIGITS_CACHE[key] = digit_indices(split)
  return _DIGITS_CACHE[key]


# ----------------------------------------------------------------------------
# TFDS builder.


@dataclasses.dataclass(eq=False)
class AvDigitsConfig(tfds.core.BuilderConfig):
  """Split sizes; `full` (4000/500/500) unless SOUNDLOC_AV_DIGITS_SIZES is set."""
  sizes: dict = dataclasses.field(default_factory=lambda: dict(FULL_SIZES))


def config_for_sizes(sizes: dict[str, int]) -> AvDigitsConfig:
  """The config (`full` or `small_...`) holding these split sizes."""
  sizes = {s: int(sizes[s]) for s in SPLITS}
  name = config_name_for_sizes(sizes)
  desc = ("Full size." if name == "full" else
          "Reduced split sizes (for tests, see $" + SIZES_ENV + "); not the full dataset.")
  return AvDigitsConfig(name=name, description=desc, sizes=sizes)


def config_from_name(name: str) -> AvDigitsConfig:
  """Parses a config name: `full` or `small_<train>_<validation>_<test>`."""
  if name == "full":
    return config_for_sizes(FULL_SIZES)
  parts = name.split("_")
  if len(parts) == 4 and parts[0] == "small" and all(p.isdigit() and int(p) > 0 for p in parts[1:]):
    return config_for_sizes(dict(zip(SPLITS, map(int, parts[1:]))))
  raise ValueError(f"av_digits config {name!r}: expected 'full' or 'small_TRAIN_VALIDATION_TEST'")


def default_config() -> AvDigitsConfig:
  """`full`, or `small_...` when $SOUNDLOC_AV_DIGITS_SIZES is set (read now)."""
  return config_for_sizes(sizes_from_env() or FULL_SIZES)


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for av_digits (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  # Read once, at import: what `tfds_build` builds and bare `av_digits` means.
  BUILDER_CONFIGS = [default_config()]

  def _info(self) -> tfds.core.DatasetInfo:
    # The description is read from README.md (TFDS dataset-folder layout).
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            # Raw bytes: without `encoding`, TFDS would store every uint8
            # as an int64 and every float16 as a float32.
            "image": tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "spectrogram": tfds.features.Tensor(shape=SPEC_SHAPE, dtype=np.float16,
                                                encoding=tfds.features.Encoding.BYTES),
            "id": tfds.features.Text(),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
            "present": tfds.features.Tensor(shape=(NUM_CELLS,), dtype=np.int64),
        }),
        supervised_keys=None,
        homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        metadata=tfds.core.MetadataDict(
            audio=dict(DEMO_AUDIO),
            image_size=IMAGE_SIZE,
            grid=GRID,
            cell_size=CELL_SIZE,
            num_classes=NUM_CLASSES,
            sizes=dict(self.builder_config.sizes),
        ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split, int(self.builder_config.sizes[split]))
            for split in SPLITS}

  def _generate_examples(self, split: str, num_examples: int):
    # One example's matrices are tiny: multi-threaded BLAS (the mel filterbank
    # product) is ~2x slower than one thread here.
    try:
      from threadpoolctl import threadpool_limits  # a scikit-learn dependency
      limits = threadpool_limits(limits=1)
    except ImportError:
      limits = contextlib.nullcontext()
    with limits:
      for i in range(num_examples):
        ex = make_example(split, i)
        yield ex["id"], ex
