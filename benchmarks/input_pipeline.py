"""Storage choices of the real-data builders and the augmented training pipeline's rate.

  python benchmarks/input_pipeline.py [--examples 256] [--batch 64] [--threads 1,2]

Prints one JSON line per measurement:
  * `storage`: bytes per example and host decode cost of a training frame
    stored raw (uint8, shorter side 246) vs JPEG (quality 95, what the
    builders store), and of the audio stored as the float16 spectrogram
    (what the builders store) vs the int16 waveform (the spectrogram then
    computed per example on the host: `audio.log_spectrogram`, LVS 3 s).
    Frames are scikit-learn's two bundled photographs (china.jpg,
    flower.jpg, 427x640), natural images; the audio is a tone in noise.
  * `build`: a `folder` dataset of `--examples` examples (random crops of
    those photos, 4 s wavs) built with the Python API on all cores:
    examples/s of preparation (decode, resize, JPEG, spectrogram).
  * `pipeline`: examples/s of `input_pipeline.train_iterator` on it with
    augmentation (decode JPEG, shorter side 246 -> random 224 crop, flip;
    float16 -> float32 spectrogram), per `--threads` value, after one warm-up
    batch. Compare with `benchmarks/train_step.py`'s samples_per_s at the
    same shapes (224, 257x299, width 64) on the same machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _timeit(fn, repeat: int) -> float:
  fn()
  t0 = time.perf_counter()
  for _ in range(repeat):
    fn()
  return (time.perf_counter() - t0) / repeat


def photos() -> list[np.ndarray]:
  from sklearn.datasets import load_sample_image  # bundled files, no download
  return [load_sample_image(n) for n in ("china.jpg", "flower.jpg")]


def storage() -> dict:
  from PIL import Image
  from soundloc_jax.configs.default import LVS_AUDIO
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
  spec = audio.log_spectrogram(wave, 16000, LVS_AUDIO).astype(np.float16)
  pcm = builder_lib.to_pcm16(wave)
  spec_bytes, pcm_bytes = spec.tobytes(), pcm.tobytes()
  out.update(
      spectrogram_shape=list(spec.shape), spectrogram_f16_bytes=len(spec_bytes),
      waveform_i16_bytes=len(pcm_bytes),
      spectrogram_f16_decode_ms=round(1e3 * _timeit(
          lambda: np.frombuffer(spec_bytes, np.float16).astype(np.float32), 200), 3),
      waveform_i16_to_spectrogram_ms=round(1e3 * _timeit(
          lambda: audio.log_spectrogram(np.frombuffer(pcm_bytes, np.int16) / np.float32(32768),
                                        16000, LVS_AUDIO), 30), 3))
  return out


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


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--examples", type=int, default=256)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--threads", default="1,2", help="grain read threads to try")
  p.add_argument("--steps", type=int, default=6, help="timed batches per thread setting")
  args = p.parse_args()
  print(json.dumps(storage()), flush=True)

  import tensorflow_datasets as tfds
  from soundloc_jax.data_builders.folder import folder_dataset_builder
  from soundloc_jax import input_pipeline
  with tempfile.TemporaryDirectory() as tmp:
    manual, data = os.path.join(tmp, "m"), os.path.join(tmp, "d")
    os.makedirs(manual)
    make_folder(manual, args.examples)
    builder = folder_dataset_builder.Builder(data_dir=data, file_format="array_record")
    t0 = time.perf_counter()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    seconds = time.perf_counter() - t0
    print(json.dumps({"benchmark": "build", "examples": args.examples, "workers": os.cpu_count(),
                      "seconds": round(seconds, 2),
                      "examples_per_s": round(args.examples / seconds, 1)}), flush=True)
    source = tfds.data_source("folder", split="train", data_dir=data)
    for threads in (int(t) for t in args.threads.split(",")):
      it, _ = input_pipeline.train_iterator(
          source, global_batch=args.batch, seed=0, start_step=0, num_steps=args.steps + 1,
          image_size=224, augment=True, num_threads=threads)
      batch = next(it)  # warm-up (thread start, first reads)
      t0 = time.perf_counter()
      for _ in range(args.steps):
        batch = next(it)
      seconds = time.perf_counter() - t0
      print(json.dumps({"benchmark": "pipeline", "threads": threads, "batch": args.batch,
                        "image": list(batch["image"].shape[1:]),
                        "spectrogram": list(batch["spectrogram"].shape[1:]),
                        "examples_per_s": round(args.steps * args.batch / seconds, 1),
                        "cpus": os.cpu_count()}), flush=True)


if __name__ == "__main__":
  main()
