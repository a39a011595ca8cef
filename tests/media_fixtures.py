"""Tiny real media files for the media and builder tests, written with numpy + PyAV.

Every file's content is a known function of its arguments, so tests can check
what comes back: `tone(seconds, rate, freq)` is the waveform written to wav /
flac / the mp4 audio track; a video's frame `k` is a flat colour
`frame_colour(k)` (large flat areas survive H.264 almost exactly), so the
decoded middle frame identifies its index; `write_image` writes a gradient.
"""

from __future__ import annotations

import fractions
import os

import numpy as np


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
  t = np.arange(int(round(seconds * rate))) / rate
  return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def frame_colour(k: int) -> np.ndarray:
  """Frame k's RGB colour: distinct per k in 0..30, far apart in R and G."""
  return np.array([(k * 8) % 256, 255 - (k * 8) % 256, 128], np.uint8)


def write_audio(path, waveform: np.ndarray, rate: int = 16000, channels: int = 1) -> str:
  """wav (pcm_s16le) or flac of a mono waveform (duplicated to `channels`)."""
  import av
  path = os.fspath(path)
  codec = "flac" if path.endswith(".flac") else "pcm_s16le"
  layout = "mono" if channels == 1 else "stereo"
  with av.open(path, "w") as out:
    stream = out.add_stream(codec, rate=rate, layout=layout)
    pcm = np.clip(np.round(waveform * 32767), -32768, 32767).astype(np.int16)
    data = np.repeat(pcm[None, :], channels, axis=0).T.reshape(1, -1)  # packed s16
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format="s16", layout=layout)
    frame.sample_rate = rate
    for packet in stream.encode(frame):
      out.mux(packet)
    for packet in stream.encode(None):
      out.mux(packet)
  return path


def write_video(path, *, seconds: float = 2.0, fps: int = 10, size=(48, 64),
                audio: np.ndarray | None = None, rate: int = 16000) -> str:
  """H.264 mp4 of flat-colour frames (`frame_colour(k)`), with an AAC track of
  `audio` when given."""
  import av
  path = os.fspath(path)
  h, w = size
  with av.open(path, "w") as out:
    video = out.add_stream("libx264", rate=fps)
    video.width, video.height, video.pix_fmt = w, h, "yuv420p"
    video.options = {"preset": "ultrafast", "crf": "10"}
    astream = None
    if audio is not None:
      astream = out.add_stream("aac", rate=rate, layout="mono")
    for k in range(int(round(seconds * fps))):
      image = np.broadcast_to(frame_colour(k), (h, w, 3)).copy()
      frame = av.VideoFrame.from_ndarray(image, format="rgb24")
      frame.pts = k
      frame.time_base = fractions.Fraction(1, fps)
      for packet in video.encode(frame):
        out.mux(packet)
    for packet in video.encode(None):
      out.mux(packet)
    if astream is not None:
      block = 1024  # AAC frame size
      pcm = np.asarray(audio, np.float32)
      for a in range(0, pcm.size, block):
        frame = av.AudioFrame.from_ndarray(pcm[None, a:a + block].copy(), format="fltp",
                                           layout="mono")
        frame.sample_rate = rate
        frame.pts = a
        frame.time_base = fractions.Fraction(1, rate)
        for packet in astream.encode(frame):
          out.mux(packet)
      for packet in astream.encode(None):
        out.mux(packet)
  return path


def gradient_image(h: int = 40, w: int = 60, seed: int = 0) -> np.ndarray:
  """A smooth RGB uint8 image (JPEG keeps it within a few levels)."""
  y, x = np.mgrid[0:h, 0:w]
  rng = np.random.default_rng(seed)
  a, b, c = rng.uniform(0.5, 3.0, 3)
  img = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1),
                  127 + 100 * np.sin(a * x / w + b * y / h + c)], axis=-1)
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def write_image(path, image: np.ndarray | None = None, mode: str = "RGB", **kwargs) -> str:
  """jpg / png of `image` (default `gradient_image(**kwargs)`), saved in PIL `mode`."""
  from PIL import Image
  path = os.fspath(path)
  image = gradient_image(**kwargs) if image is None else image
  pil = Image.fromarray(image)
  if mode != "RGB":
    pil = pil.convert(mode)
  pil.save(path, quality=95) if path.endswith((".jpg", ".jpeg")) else pil.save(path)
  return path


def write_corrupt(path, size: int = 300, seed: int = 1) -> str:
  """Random bytes under a media extension."""
  with open(path, "wb") as f:
    f.write(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
  return os.fspath(path)
