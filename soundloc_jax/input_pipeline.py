"""grain input pipelines over TFDS array_record data sources (no TensorFlow).

Batch contract (every dataset builder's examples are mapped to this):
  * `image`        uint8   `[B, H, W, 3]`  model input size (normalised on device)
  * `spectrogram`  float32 `[B, F, T]`     `audio.log_spectrogram` output
  * `id`           bytes   `[B]`           example id (host only, never sent to device)
  * `box`          float32 `[B, 4]`        demo data: sounding box [x0, y0, x1, y1] in
                                           input pixels, half-open (eval splits)
  * `index`        int64   `[B]`           position in the split (host only)
  * `silent_maps`  float32 `[B, K, S, S]`  test splits storing `silent_boxes` (stamps):
    `silent_valid` bool `[B, K]`          one map per silent object, padded (host only)
  * `gt_map`       float32 `[B, S, S]`     real test splits: ground-truth map at the
                                           evaluation size (host only, see below)
Data sources come from `data.open_source` (`tfds.data_source` over
array_record). Only `DEVICE_KEYS` are sent to the device (`distributed.global_batch`); the
rest stay on the host. HardPos training batches (`train_iterator` with
`neighbours`) hold `[B, 2, ...]` images and spectrograms plus
`negative_mask` and `neighbour_index` (see `train_iterator`; sent to the
device: `NEIGHBOUR_DEVICE_KEYS`).

Epochs: an epoch is `steps_per_epoch = N // global_batch` steps over a fresh
permutation of the split (seeded by `(seed, epoch)`), dropping the remainder,
so the epoch boundary (and the teacher refresh) is a fixed step. The element
at global position `i` is a pure function of `(seed, i)`, which makes resuming
exact: a resumed run starts the same sequence at `step * global_batch`, and the
checkpoint needs to store only the step. Each process reads only its slice
of every global batch (`process_index`, `process_count`).

Ground truth of real test splits (`data_builders/*`, `builder_lib`): each
example stores the raw annotation numbers `gt_boxes` float32 `[N, 4]` (any N,
a plain Tensor: a BBoxFeature would reject the out-of-range and inverted boxes
the official rules keep) and the dataset metadata says how to read them,
`gt_format` (`evaluation.annotations`: `"flickr256"`, `"unit"`, `"pixels"` or
`"pixels:S"`).
`eval_batches` given `gt_format` turns them into `gt_map` `[S, S]` with that
rule (`annotations.gt_map_from_boxes`). Test splits also store `waveform` (int16, the first
10 s at 16 kHz); `eval_audio="lvs_test"` computes the spectrogram from it with
the LVS test front end (`audio.LVS_TEST`, 257x671) instead of using the
stored training-front-end `spectrogram`.
"""

from __future__ import annotations

import functools

import grain
import numpy as np

from soundloc_jax.errors import ConfigError, DatasetError
from soundloc_jax.evaluation import annotations

DEVICE_KEYS = ("image", "spectrogram")
NEIGHBOUR_DEVICE_KEYS = DEVICE_KEYS + ("negative_mask",)  # HardPos (`train_iterator`)
EVAL_AUDIO = ("", "lvs_test")


def lvs_test_spectrogram(waveform_int16: np.ndarray) -> np.ndarray:
  """The LVS test front end (257x671) of a stored test `waveform`."""
  from soundloc_jax import audio
  x = np.asarray(waveform_int16, np.float32) / 32768.0
  return audio.log_spectrogram(x, audio.LVS_TEST["sample_rate"], audio.LVS_TEST)


def preprocess(example: dict, *, image_size: int, augment: bool, rng: np.random.Generator,
               index: int, gt_format: str = "", gt_size: int = 224,
               eval_audio: str = "") -> dict:
  """One decoded TFDS example -> the batch contract (numpy, host side).
  `gt_format` (from the dataset metadata) adds `gt_map` at `gt_size` for
  examples with `gt_boxes`, and `silent_maps` / `silent_valid` for examples
  with `silent_boxes` (`annotations.silent_maps_from_boxes`);
  `eval_audio="lvs_test"` recomputes `spectrogram` from the stored test
  `waveform`."""
  image = np.asarray(example["image"])
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  image = augment_image(image, image_size, rng) if augment else eval_image(image, image_size)
  if eval_audio not in EVAL_AUDIO:
    raise ConfigError(f"eval.audio {eval_audio!r}: expected '' (the stored spectrogram) or "
                      "'lvs_test' (the LVS test front end on the stored waveform)")
  if eval_audio == "lvs_test":
    if np.size(example.get("waveform", ())) == 0:
      raise DatasetError("eval.audio='lvs_test' needs the stored test 'waveform', which this "
                         "split does not have; use eval.audio=''")
    spectrogram = lvs_test_spectrogram(example["waveform"])
  else:
    spectrogram = np.asarray(example["spectrogram"], dtype=np.float32)
  out = {
      "image": np.ascontiguousarray(image, dtype=np.uint8),
      "spectrogram": spectrogram,
      "index": np.int64(index),
  }
  if gt_format and "gt_boxes" in example:
    out["gt_map"] = annotations.gt_map_from_boxes(example["gt_boxes"], gt_format, gt_size)
  if gt_format and np.size(example.get("silent_boxes", ())):
    out["silent_maps"], out["silent_valid"] = annotations.silent_maps_from_boxes(
        example["silent_boxes"], gt_format, gt_size)
  ident = example.get("id", b"")
  out["id"] = ident if isinstance(ident, bytes) else str(ident).encode()
  if "box" in example:
    out["box"] = np.asarray(example["box"], dtype=np.float32)
  return out


def resized_shape(h: int, w: int, shorter: int) -> tuple[int, int]:
  """`(H', W')` of an `h` x `w` image whose shorter side is scaled to `shorter`."""
  scale = shorter / min(h, w)
  return max(shorter, round(h * scale)), max(shorter, round(w * scale))


def _resize_shorter(image: np.ndarray, shorter: int) -> np.ndarray:
  from PIL import Image
  rh, rw = resized_shape(image.shape[0], image.shape[1], shorter)
  return np.asarray(Image.fromarray(image).resize((rw, rh), Image.BICUBIC))


def eval_image(image: np.ndarray, size: int) -> np.ndarray:
  """The model input at evaluation and inference: an RGB uint8 image already
  `size` x `size` is used as is, any other goes through `center_crop_resize`."""
  if image.shape[0] != size or image.shape[1] != size:
    image = center_crop_resize(image, size)
  return image


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
  """Test-time transform of the peers: shorter side to `size`, centre crop."""
  image = _resize_shorter(image, size)
  h, w = image.shape[:2]
  top, left = (h - size) // 2, (w - size) // 2
  return image[top:top + size, left:left + size]


def augment_image(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """Training transform of LVS / EZ-VSL: shorter side to int(1.1 * size)
  (bicubic), random `size` crop, random horizontal flip."""
  image = _resize_shorter(image, int(size * 1.1))
  h, w = image.shape[:2]
  top = int(rng.integers(0, h - size + 1))
  left = int(rng.integers(0, w - size + 1))
  image = image[top:top + size, left:left + size]
  if rng.random() < 0.5:
    image = image[:, ::-1]
  return image


class EpochSampler:
  """Maps a global element position to a source index: fresh permutation per epoch."""

  def __init__(self, num_examples: int, global_batch: int, seed: int):
    if num_examples < global_batch:
      raise DatasetError(f"the training split has {num_examples} examples, fewer than one "
                         f"global batch ({global_batch}); lower batch_size")
    self.num_examples = num_examples
    self.global_batch = global_batch
    self.seed = seed
    self.steps_per_epoch = num_examples // global_batch

  @functools.lru_cache(maxsize=4)
  def permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

  def __call__(self, position: int) -> int:
    step, slot = divmod(position, self.global_batch)
    epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
    return int(self.permutation(epoch)[step_in_epoch * self.global_batch + slot])

  def batch_indices(self, step: int) -> np.ndarray:
    """Source indices of global batch `step` (all processes' rows, in order)."""
    epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
    start = step_in_epoch * self.global_batch
    return self.permutation(epoch)[start:start + self.global_batch]


def train_iterator(source, *, global_batch: int, seed: int, start_step: int, num_steps: int,
                   image_size: int, augment: bool, num_threads: int = 0,
                   process_index: int = 0, process_count: int = 1, neighbours=None):
  """Iterator over this process's part of global batches `start_step .. num_steps-1`.

  With `neighbours` (a `soundloc_jax.neighbours.NeighbourTable`, HardPos) each
  base example also brings one sampled visual neighbour's image and one
  sampled audio neighbour's spectrogram (drawn from `(seed, position)` only),
  and its row of the negative mask; the batch then holds
    `image`          uint8   `[B, 2, H, W, 3]`  (base, visual neighbour's image)
    `spectrogram`    float32 `[B, 2, F, T]`     (base, audio neighbour's spectrogram)
    `negative_mask`  bool    `[B, G]`           [r, l]: the global batch's base
                                                example l is outside both
                                                neighbour sets of row r and not r
    `neighbour_index` int64  `[B, 2]`           (audio, visual) positions, host only
  (`NEIGHBOUR_DEVICE_KEYS` go to the device). B is this process's rows, G the
  global batch; steps and throughput count base examples.
  """
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
  local_batch = global_batch // process_count
  sampler = EpochSampler(len(source), global_batch, seed)

  def global_position(local_position: int) -> int:
    step, slot = divmod(local_position, local_batch)
    return (start_step + step) * global_batch + process_index * local_batch + slot

  def load(local_position: int) -> dict:
    position = global_position(local_position)
    index = sampler(position)
    rng = np.random.default_rng([seed, 1, position])
    return preprocess(source[index], image_size=image_size, augment=augment, rng=rng,
                      index=index)

  def load_with_neighbours(local_position: int) -> dict:
    base = load(local_position)
    position = global_position(local_position)
    index = int(base["index"])
    neighbours.check_id(index, base["id"])
    pick = np.random.default_rng([seed, 2, position]).integers(0, neighbours.num_neighbours, 2)
    audio_index = int(neighbours.audio(index)[pick[0]])
    visual_index = int(neighbours.visual(index)[pick[1]])
    parts = {}
    for slot, other in ((3, audio_index), (4, visual_index)):
      example = source[other]
      neighbours.check_id(other, example.get("id", b""))
      parts[slot] = preprocess(example, image_size=image_size, augment=augment,
                               rng=np.random.default_rng([seed, slot, position]), index=other)
    base["image"] = np.stack([base["image"], parts[4]["image"]])
    base["spectrogram"] = np.stack([base["spectrogram"], parts[3]["spectrogram"]])
    base["negative_mask"] = neighbours.negative_row(
        index, sampler.batch_indices(position // global_batch))
    base["neighbour_index"] = np.asarray([audio_index, visual_index], np.int64)
    return base

  ds = grain.MapDataset.range(0, (num_steps - start_step) * local_batch)
  ds = ds.map(load if neighbours is None else load_with_neighbours)
  ds = ds.batch(local_batch, drop_remainder=True)
  options = grain.ReadOptions(num_threads=max(num_threads, 1), prefetch_buffer_size=2 * local_batch)
  return iter(ds.to_iter_dataset(options)), sampler.steps_per_epoch


def eval_batches(source, *, batch_size: int, image_size: int, num_threads: int = 0,
                 gt_format: str = "", gt_size: int = 224, eval_audio: str = ""):
  """Whole split in order; the last batch is padded by repeating its final example,
  and `valid` (bool [B]) marks the real rows. `gt_format`, `gt_size`,
  `eval_audio`: see `preprocess`."""
  n = len(source)

  def load(i: int) -> dict:
    return preprocess(source[min(i, n - 1)], image_size=image_size, augment=False,
                      rng=np.random.default_rng(0), index=min(i, n - 1), gt_format=gt_format,
                      gt_size=gt_size, eval_audio=eval_audio)

  padded = -(-n // batch_size) * batch_size
  ds = grain.MapDataset.range(0, padded).map(load).batch(batch_size)
  options = grain.ReadOptions(num_threads=max(num_threads, 1), prefetch_buffer_size=batch_size)
  for b, batch in enumerate(ds.to_iter_dataset(options)):
    batch["valid"] = np.arange(b * batch_size, (b + 1) * batch_size) < n
    yield batch

