"""grain input pipelines over TFDS array_record data sources (no TensorFlow).

Training batch contract (`train_iterator`; every dataset builder's examples
are mapped to it):
  * `image`        uint8   `[B, H, W, 3]`  the model-input-sized crop as
                                           decoded, before its flip (colour
                                           conversion, flip and normalisation
                                           run on the device)
  * `ycbcr`        bool    `[B]`           this crop holds JPEG Y, Cb, Cr:
                                           converted to RGB in the step
                                           (`device_inputs`, libjpeg's arithmetic)
  * `flip`         bool    `[B]`           mirror this image horizontally
                                           (`device_inputs`, in the step)
  * `spectrogram`  float16 `[B, F, T]`     `audio.log_spectrogram` output as
                                           stored (builders store float16; a
                                           source of float32 gives float32);
                                           the step casts it to float32
  * `id`           bytes   `[B]`           example id (host only, never sent to device)
  * `box`          float32 `[B, 4]`        demo data: sounding box [x0, y0, x1, y1] in
                                           input pixels, half-open (eval splits)
  * `index`        int64   `[B]`           position in the split (host only)
Evaluation batches (`eval_batches`) hold the final `image` (no `flip`), a
float32 `spectrogram`, `valid`, and for real test splits `gt_map` float32
`[B, S, S]`: the ground-truth map at the evaluation size and `gt_count`
int32 `[B]`, the number of boxes stored (0: the source is off-screen, the
extended protocol's negatives) (host only, see below); test splits storing `silent_boxes` (stamps) also hold `silent_maps`
float32 `[B, K, S, S]` and `silent_valid` bool `[B, K]`: one map per silent
object, padded (host only).
Data sources come from `data.open_source` (`tfds.data_source` over
array_record; the training split with `encoded_images`, so a frame is
decoded here, once per batch, straight into its crops). Only `DEVICE_KEYS`
are sent to the device (`distributed.global_batch`); the rest stay on the
host. HardPos training batches (`train_iterator` with `neighbours`) hold
`[B, 2, ...]` images, flips and spectrograms plus `negative_mask`,
`audio_neighbour_mask` and `neighbour_index` (see `train_iterator`; sent to the device:
`NEIGHBOUR_DEVICE_KEYS`).

Host work per example is kept small (benchmarks/input_pipeline.py): a stored
training frame already has the shorter side the crop needs, so it is decoded
and cropped without a resize, and its JPEG colour conversion is left to the
device; the spectrogram is copied as stored; whole
batches are built at once (`BatchLoader`), in grain threads or worker
processes (`worker_processes`); `distributed.prefetch_to_device` keeps the
next batches on the device while the step runs.

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
import io

import grain
import numpy as np
from PIL import Image

from soundloc_jax.errors import ConfigError, DatasetError
from soundloc_jax.evaluation import annotations

DEVICE_KEYS = ("image", "spectrogram", "flip", "ycbcr")
# HardPos, ICL x HardPos (`train_iterator`)
NEIGHBOUR_DEVICE_KEYS = DEVICE_KEYS + ("negative_mask", "audio_neighbour_mask")
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
    # boxes stored: 0 = the sound's source is not in the frame (extended protocol)
    out["gt_count"] = np.int32(np.asarray(example["gt_boxes"]).reshape(-1, 4).shape[0])
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
  (bicubic), random `size` crop, random horizontal flip. The definition the
  training path reproduces exactly, split between host (`train_view`) and
  device (`device_inputs`); tests/input_pipeline_test.py compares them."""
  image = _resize_shorter(image, int(size * 1.1))
  h, w = image.shape[:2]
  top = int(rng.integers(0, h - size + 1))
  left = int(rng.integers(0, w - size + 1))
  image = image[top:top + size, left:left + size]
  if rng.random() < 0.5:
    image = image[:, ::-1]
  return image


def train_view(frame, size: int, augment: bool, rng: np.random.Generator):
  """`(crop uint8 [size, size, 3], flip, ycbcr)`: the training transform of
  `augment_image` (or `eval_image` without `augment`) with the flip left to
  the device (`device_inputs`). `frame` is an RGB array or an unloaded
  `PIL.Image` (an encoded frame opened by `open_frame`): its size is known
  before decoding, so a stored training frame (shorter side already
  `int(1.1 * size)`) is decoded once, cropped in C and never resized, and a
  JFIF JPEG is decoded without libjpeg's colour conversion (`ycbcr` True:
  the crop holds Y, Cb, Cr and `device_inputs` converts it with libjpeg's
  integer arithmetic, which gives the same pixels). Any other frame is
  resized (in RGB) as before. The draws are `augment_image`'s, in its order,
  so the crop and flip are the same."""
  if not augment:
    return eval_image(_rgb_array(frame), size), False, False
  shorter = int(size * 1.1)
  w, h = frame.size if isinstance(frame, Image.Image) else frame.shape[1::-1]
  rh, rw = resized_shape(h, w, shorter)
  top = int(rng.integers(0, rh - size + 1))
  left = int(rng.integers(0, rw - size + 1))
  flip = bool(rng.random() < 0.5)
  if (rh, rw) != (h, w):  # not a stored training frame: resize first, as augment_image does
    frame = _resize_shorter(_rgb_array(frame), shorter)
  if not isinstance(frame, Image.Image):
    return frame[top:top + size, left:left + size], flip, False
  ycbcr = _decode_to_ycbcr(frame)
  return np.asarray(frame.crop((left, top, left + size, top + size))), flip, ycbcr


def open_frame(image):
  """A frame as `train_view` takes it: encoded bytes (a TFDS source opened
  with `encoded_images`) -> an unloaded `PIL.Image` (RGB, or a JPEG that
  libjpeg will convert to RGB); an array -> RGB array."""
  if isinstance(image, (bytes, np.bytes_)):
    frame = Image.open(io.BytesIO(image))
    return frame if frame.mode == "RGB" else frame.convert("RGB")
  image = np.asarray(image)
  return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def _decode_to_ycbcr(frame) -> bool:
  """Whether `frame` decodes (or was decoded) to YCbCr: an unloaded JFIF JPEG
  (YCbCr-coded; not an Adobe one, which may hold RGB) is set to skip the
  colour conversion. A frame used twice gets the same answer."""
  if (frame.mode == "RGB" and frame.format == "JPEG" and "jfif" in frame.info
      and "adobe" not in frame.info and frame.tile):
    frame.draft("YCbCr", frame.size)
  return frame.mode == "YCbCr"


def _rgb_array(frame) -> np.ndarray:
  return np.asarray(frame) if isinstance(frame, Image.Image) else frame


# libjpeg's YCbCr -> RGB (jdcolor.c: 16-bit fixed point, round half up).
_FIX = {name: int(v * 65536 + 0.5) for name, v in
        (("cr_r", 1.40200), ("cb_g", 0.34414), ("cr_g", 0.71414), ("cb_b", 1.77200))}


def ycbcr_to_rgb(image):
  """uint8 `[..., 3]` YCbCr -> RGB exactly as libjpeg(-turbo) decodes a JFIF
  JPEG (jnp, inside the step)."""
  import jax.numpy as jnp
  x = jnp.asarray(image).astype(jnp.int32)
  y, cb, cr = x[..., 0], x[..., 1] - 128, x[..., 2] - 128
  half = 1 << 15
  r = y + ((_FIX["cr_r"] * cr + half) >> 16)
  g = y + ((half - _FIX["cb_g"] * cb - _FIX["cr_g"] * cr) >> 16)
  b = y + ((_FIX["cb_b"] * cb + half) >> 16)
  return jnp.clip(jnp.stack([r, g, b], axis=-1), 0, 255).astype(jnp.uint8)


def device_inputs(batch):
  """The device half of the training transform, inside the jitted step:
  `(image, spectrogram)` with each image converted to RGB where `ycbcr`
  says and mirrored where `flip` says (the host sent the crop as decoded,
  unflipped) and the spectrogram as float32 (the host sent it as stored,
  float16). Normalisation follows in the model. Batches without these keys
  (evaluation, synthetic inputs) pass through."""
  import jax.numpy as jnp
  image, spectrogram = batch["image"], batch["spectrogram"]
  per_image = lambda key: jnp.asarray(batch[key]).reshape(image.shape[:-3] + (1, 1, 1))
  if "ycbcr" in batch:
    image = jnp.where(per_image("ycbcr"), ycbcr_to_rgb(image), image)
  if "flip" in batch:
    image = jnp.where(per_image("flip"), jnp.flip(image, axis=-2), image)
  return image, jnp.asarray(spectrogram, jnp.float32)


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


class BatchLoader:
  """`step -> this process's rows of global batch step` (the batch contract),
  built batch by batch: each distinct example the batch needs is read once
  and each distinct frame decoded once (HardPos neighbours often repeat on
  small splits), crops go straight into preallocated batch arrays (with
  their flip and colour space: `train_view`). Row `r` of process `p` is
  global position `step * G + p * B + r`; its crop and flip come from `(seed, 1, position)`, a HardPos row's neighbour picks from
  `(seed, 2, position)` and its visual neighbour's crop from `(seed, 4,
  position)`, so a batch is a pure function of `(seed, step)`."""

  def __init__(self, source, sampler: EpochSampler, *, seed: int, image_size: int,
               augment: bool, local_batch: int, process_index: int, neighbours=None):
    self.source, self.sampler, self.seed = source, sampler, seed
    self.image_size, self.augment, self.neighbours = image_size, augment, neighbours
    self.local_batch, self.offset = local_batch, process_index * local_batch

  def __call__(self, step: int) -> dict:
    table, b = self.neighbours, self.local_batch
    batch_indices = self.sampler.batch_indices(step)
    indices = batch_indices[self.offset:self.offset + b]
    positions = step * self.sampler.global_batch + self.offset + np.arange(b)
    # (row, slot, source index, rng seed slot) of every frame and spectrogram used.
    images = [(r, 0, int(i), 1) for r, i in enumerate(indices)]
    spectrograms = [(r, 0, int(i)) for r, i in enumerate(indices)]
    out = {"index": indices.astype(np.int64)}
    if table is not None:
      picks = np.stack([np.random.default_rng([self.seed, 2, int(p)]).integers(
          0, table.num_neighbours, 2) for p in positions])
      audio_index = [int(table.audio(int(i))[k]) for i, k in zip(indices, picks[:, 0])]
      visual_index = [int(table.visual(int(i))[k]) for i, k in zip(indices, picks[:, 1])]
      images += [(r, 1, v, 4) for r, v in enumerate(visual_index)]
      spectrograms += [(r, 1, a) for r, a in enumerate(audio_index)]
      out["negative_mask"] = np.stack([table.negative_row(int(i), batch_indices)
                                       for i in indices])
      out["audio_neighbour_mask"] = np.stack([np.isin(batch_indices, table.audio(int(i)))
                                              for i in indices])
      out["neighbour_index"] = np.asarray([audio_index, visual_index], np.int64).T
    examples = {}
    for i in sorted({i for _, _, i, _ in images} | {i for _, _, i in spectrograms}):
      examples[i] = self.source[i]
      if table is not None:
        table.check_id(i, examples[i].get("id", b""))
    slots = (2,) if table is not None else ()
    size = self.image_size
    image = np.empty((b, *slots, size, size, 3), np.uint8)
    flip, ycbcr = np.zeros((b, *slots), bool), np.zeros((b, *slots), bool)
    frames = {}
    for r, slot, i, rng_slot in images:
      if i not in frames:
        frames[i] = open_frame(examples[i]["image"])
      rng = np.random.default_rng([self.seed, rng_slot, int(positions[r])])
      where = (r, slot) if slots else (r,)
      image[where], flip[where], ycbcr[where] = train_view(frames[i], size, self.augment, rng)
    first = np.asarray(examples[spectrograms[0][2]]["spectrogram"])
    spectrogram = np.empty((b, *slots) + first.shape, first.dtype)
    for r, slot, i in spectrograms:
      spectrogram[(r, slot) if slots else r] = examples[i]["spectrogram"]
    out.update(image=image, spectrogram=spectrogram, flip=flip, ycbcr=ycbcr)
    ids = [examples[int(i)].get("id", b"") for i in indices]
    out["id"] = np.asarray([x if isinstance(x, bytes) else str(x).encode() for x in ids])
    if "box" in examples[int(indices[0])]:
      out["box"] = np.stack([np.asarray(examples[int(i)]["box"], np.float32) for i in indices])
    return out


def train_iterator(source, *, global_batch: int, seed: int, start_step: int, num_steps: int,
                   image_size: int, augment: bool, num_threads: int = 0,
                   worker_processes: int = 0, process_index: int = 0, process_count: int = 1,
                   neighbours=None):
  """Iterator over this process's part of global batches `start_step .. num_steps-1`.

  Each element is one batch (`BatchLoader`); `num_threads` grain threads
  build batches concurrently, `worker_processes` > 0 moves that into grain
  worker processes (each builds every n-th batch; the order stays the same).
  With `neighbours` (a `soundloc_jax.neighbours.NeighbourTable`, HardPos) each
  base example also brings one sampled visual neighbour's image and one
  sampled audio neighbour's spectrogram (drawn from `(seed, position)` only),
  and its row of the negative mask; the batch then holds
    `image`          uint8   `[B, 2, H, W, 3]`  (base, visual neighbour's image)
    `spectrogram`    float16 `[B, 2, F, T]`     (base, audio neighbour's spectrogram)
    `flip`, `ycbcr`  bool    `[B, 2]`
    `negative_mask`  bool    `[B, G]`           [r, l]: the global batch's base
                                                example l is outside both
                                                neighbour sets of row r and not r
    `audio_neighbour_mask` bool `[B, G]`        [r, l]: l is in row r's audio
                                                set (ICL x HardPos's mined Eq. 6)
    `neighbour_index` int64  `[B, 2]`           (audio, visual) positions, host only
  (`NEIGHBOUR_DEVICE_KEYS` go to the device). B is this process's rows, G the
  global batch; steps and throughput count base examples.
  """
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
  sampler = EpochSampler(len(source), global_batch, seed)
  loader = BatchLoader(source, sampler, seed=seed, image_size=image_size, augment=augment,
                       local_batch=global_batch // process_count, process_index=process_index,
                       neighbours=neighbours)
  ds = grain.MapDataset.range(start_step, num_steps).map(loader)
  # Elements are whole batches: `num_threads` of them in flight, at least 2.
  options = grain.ReadOptions(num_threads=max(num_threads, 1),
                              prefetch_buffer_size=max(num_threads, 2))
  ds = ds.to_iter_dataset(options)
  if worker_processes > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # called as a library (tests, notebooks): grain
      flags.FLAGS.mark_as_parsed()   # reads its absl flags' defaults when starting workers
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_processes,
                                                     per_worker_buffer_size=2))
  return iter(ds), sampler.steps_per_epoch


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

