"""The training pipeline's host/device split: the device-side flip and float32
spectrogram reproduce the host augmentation they replace, frames and records
are read and decoded once per batch, worker processes and device prefetch
keep the batch sequence.

Sources here are in-memory lists of example dicts, as `tfds.data_source`
returns them for a training split opened with `encoded_images` (JPEG bytes),
built from scikit-learn's bundled photographs at the stored training size.
"""

import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from soundloc_jax import distributed, input_pipeline
from soundloc_jax import state as train_state
from soundloc_jax.methods import neighbours
from soundloc_jax.models import av_model

SIZE = 64
STORED = int(1.1 * SIZE)  # the stored training frame's shorter side


def _jpeg(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def photo_source(n=24, seed=0):
  """JPEG frames with shorter side `STORED` (landscape and portrait) plus a
  few of other sizes (resized by the pipeline), float16 spectrograms."""
  from sklearn.datasets import load_sample_image
  photos = [load_sample_image(n) for n in ("china.jpg", "flower.jpg")]
  rng = np.random.default_rng(seed)
  examples = []
  for i in range(n):
    photo = photos[i % 2]
    h, w = [(STORED, 110), (STORED, 97), (120, STORED), (90, 150)][i % 4]
    top, left = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
    examples.append({"image": _jpeg(photo[top:top + h, left:left + w]),
                     "spectrogram": rng.normal(size=(6, 7)).astype(np.float16),
                     "id": f"clip_{i:03d}".encode()})
  return examples


def _decoded(example) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(example["image"])).convert("RGB"))


@functools.partial(jax.jit, static_argnums=1)
def _normalised_model_input(batch, needs_neighbours):
  """What the jitted step feeds the model's first layer (`make_train_step`)."""
  image, spectrogram = train_state.model_inputs(batch, needs_neighbours)
  return av_model.normalize_image(image), spectrogram


@pytest.mark.parametrize("hardpos", [False, True])
def test_device_augmentation_equals_the_host_augmentation_it_replaces(hardpos):
  source = photo_source()
  table = neighbours.RandomNeighbours(len(source), 5, seed=1) if hardpos else None
  seed, batch_size = 7, 8
  it, _ = input_pipeline.train_iterator(source, global_batch=batch_size, seed=seed, start_step=1,
                                        num_steps=4, image_size=SIZE, augment=True,
                                        neighbours=table)
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  flips = []
  for step, batch in enumerate(it, start=1):
    rows = []  # (row slot, example index, rng slot) of every image in the batch
    for r in range(batch_size):
      rows.append(((r, 0) if hardpos else (r,), int(batch["index"][r]), 1))
      if hardpos:
        rows.append(((r, 1), int(batch["neighbour_index"][r, 1]), 4))
    keys = input_pipeline.NEIGHBOUR_DEVICE_KEYS if hardpos else input_pipeline.DEVICE_KEYS
    device = distributed.global_batch(batch, mesh, keys=keys)
    image, spectrogram = _normalised_model_input(device, hardpos)
    host = np.empty_like(batch["image"])
    for where, index, slot in rows:
      position = step * batch_size + where[0]
      # The host version: the same draws (crop, then flip) on the decoded frame.
      rng = np.random.default_rng([seed, slot, position])
      host[where] = input_pipeline.augment_image(_decoded(source[index]), SIZE, rng)
      # Same crop, same flip: the unflipped crop, and the flip the draws gave.
      check = np.random.default_rng([seed, slot, position])
      frame = input_pipeline._resize_shorter(_decoded(source[index]), STORED)  # pylint: disable=protected-access
      top = int(check.integers(0, frame.shape[0] - SIZE + 1))
      left = int(check.integers(0, frame.shape[1] - SIZE + 1))
      crop = batch["image"][where]
      # A stored-size JPEG frame comes as decoded, in YCbCr; a resized one in RGB.
      assert batch["ycbcr"][where] == (min(_decoded(source[index]).shape[:2]) == STORED)
      if batch["ycbcr"][where]:
        crop = np.asarray(input_pipeline.ycbcr_to_rgb(crop))
      np.testing.assert_array_equal(crop, frame[top:top + SIZE, left:left + SIZE])
      assert batch["flip"][where] == (check.random() < 0.5)
      flips.append(bool(batch["flip"][where]))
    # Equal pixels after normalisation: the host-augmented images (as the
    # pipeline sent them before) through the same jitted input path.
    reference, _ = _normalised_model_input(
        {"image": host, "spectrogram": batch["spectrogram"].astype(np.float32)}, hardpos)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(reference))
    assert batch["spectrogram"].dtype == np.float16
    np.testing.assert_array_equal(np.asarray(spectrogram).reshape(batch["spectrogram"].shape),
                                  batch["spectrogram"].astype(np.float32))
  assert 0 < np.mean(flips) < 1


@pytest.mark.parametrize("subsampling", [0, 2])  # 4:4:4 and 4:2:0 (PIL's default)
def test_ycbcr_to_rgb_is_libjpegs_own_conversion(subsampling):
  from sklearn.datasets import load_sample_image
  for name in ("china.jpg", "flower.jpg"):
    buf = io.BytesIO()
    Image.fromarray(load_sample_image(name)[:246, :400]).save(buf, format="JPEG", quality=95,
                                                              subsampling=subsampling)
    frame = input_pipeline.open_frame(buf.getvalue())
    assert input_pipeline._decode_to_ycbcr(frame)  # pylint: disable=protected-access
    ycbcr = np.asarray(frame)
    rgb = np.asarray(Image.open(io.BytesIO(buf.getvalue())))  # libjpeg's own RGB decode
    assert not np.array_equal(ycbcr, rgb)
    np.testing.assert_array_equal(np.asarray(jax.jit(input_pipeline.ycbcr_to_rgb)(ycbcr)), rgb)


def test_frames_that_are_not_jfif_jpegs_are_decoded_to_rgb():
  image = np.random.default_rng(0).integers(0, 256, (STORED, 80, 3), dtype=np.uint8)
  for fmt in ("PNG", "JPEG"):
    buf = io.BytesIO()
    Image.fromarray(image if fmt == "PNG" else image[..., 0]).save(buf, format=fmt)
    frame = input_pipeline.open_frame(buf.getvalue())  # the grayscale JPEG becomes RGB
    crop, _, ycbcr = input_pipeline.train_view(frame, SIZE, True, np.random.default_rng(0))
    assert not ycbcr and crop.shape == (SIZE, SIZE, 3)


class CountingSource(list):
  """A list source that counts its reads."""
  reads = 0

  def __getitem__(self, index):
    CountingSource.reads += 1
    return super().__getitem__(index)


def test_each_example_is_read_and_each_frame_decoded_once_per_batch(monkeypatch):
  # 12 examples, batch 8: neighbours repeat base examples and each other.
  source = CountingSource(photo_source(n=12))
  table = neighbours.RandomNeighbours(len(source), 3, seed=0)
  opened = []
  real_open = input_pipeline.open_frame
  monkeypatch.setattr(input_pipeline, "open_frame", lambda image: opened.append(1) or
                      real_open(image))
  sampler = input_pipeline.EpochSampler(len(source), 8, seed=0)
  loader = input_pipeline.BatchLoader(source, sampler, seed=0, image_size=SIZE, augment=True,
                                      local_batch=8, process_index=0, neighbours=table)
  repeated = 0
  for step in range(3):
    CountingSource.reads, opened[:] = 0, []
    batch = loader(step)
    base = batch["index"].tolist()
    audio, visual = batch["neighbour_index"].T.tolist()
    assert CountingSource.reads == len(set(base) | set(audio) | set(visual))
    assert len(opened) == len(set(base) | set(visual))
    repeated += 3 * 8 - CountingSource.reads
  assert repeated > 0  # the case the dedup is for did occur


def test_worker_processes_give_the_same_batches():
  source = photo_source(n=16)
  table = neighbours.RandomNeighbours(len(source), 3, seed=0)

  def run(workers):
    it, _ = input_pipeline.train_iterator(source, global_batch=4, seed=2, start_step=3,
                                          num_steps=9, image_size=SIZE, augment=True,
                                          worker_processes=workers, neighbours=table)
    batches = list(it)
    it.close()
    return batches

  threads, processes = run(0), run(2)
  assert len(threads) == len(processes) == 6
  for a, b in zip(threads, processes):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_prefetch_to_device_keeps_order_and_closes_the_source():
  log = []

  class Batches:
    """An iterator with `close`, as grain's (which ends its worker processes)."""
    closed = False

    def __init__(self):
      self.items = iter(range(5))

    def __iter__(self):
      return self

    def __next__(self):
      return {"x": np.full((2,), next(self.items))}

    def close(self):
      self.closed = True

  def put(batch):
    log.append(int(batch["x"][0]))
    return jax.device_put(batch)

  source = Batches()
  out = distributed.prefetch_to_device(source, put, size=2)
  first = next(out)
  # Double-buffered: the next batch is already put when the first is handed out.
  assert int(first["x"][0]) == 0 and log == [0, 1]
  assert isinstance(first["x"], jax.Array)
  assert [int(b["x"][0]) for b in out] == [1, 2, 3, 4] and source.closed
  # Closed early (a run that stops), the source is closed too.
  source = Batches()
  out = distributed.prefetch_to_device(source, put)
  next(out)
  out.close()
  assert source.closed


def test_device_inputs_without_flip_pass_through():
  image = jnp.arange(2 * 3 * 4 * 3, dtype=jnp.uint8).reshape(2, 3, 4, 3)
  out, spec = input_pipeline.device_inputs({"image": image,
                                            "spectrogram": jnp.ones((2, 5), jnp.float16)})
  np.testing.assert_array_equal(out, image)
  assert spec.dtype == jnp.float32
  flipped, _ = input_pipeline.device_inputs({"image": image, "flip": jnp.asarray([True, False]),
                                             "spectrogram": jnp.ones((2, 5), jnp.float16)})
  np.testing.assert_array_equal(flipped[0], image[0, :, ::-1])
  np.testing.assert_array_equal(flipped[1], image[1])
