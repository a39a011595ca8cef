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


# ----------------------------------------------------------------------------
# Whole manual_dir layouts of the builders (data_builders/*/README.md).

FLICKR_XML = """<annotation><file>{id}</file>
<object><bbox><name>a</name><xmin>{a[0]}</xmin><ymin>{a[1]}</ymin><xmax>{a[2]}</xmax><ymax>{a[3]}</ymax></bbox></object>
<object><bbox><name>b</name><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bbox></object>
</annotation>"""


def train_pcm(i: int, seconds: float = 3.0) -> np.ndarray:
  """The int16 samples of fixture sound `i` (what a wav of `tone` holds)."""
  w = tone(seconds, freq=300.0 + 37.0 * i, amp=0.3 + 0.02 * i)
  return np.clip(np.round(w * 32767), -32768, 32767).astype(np.int16)


def write_pcm_wav(path, pcm: np.ndarray, rate: int = 16000) -> str:
  return write_audio(path, pcm.astype(np.float32) / 32767, rate)


def folder_layout(root, n_train: int = 10) -> dict:
  """`folder` manual_dir: n_train jpg+wav pairs, one video-only id, two annotated
  ids (jpg+flac, jpg+wav; 12 s sounds) with json boxes in original pixels."""
  import json
  os.makedirs(root, exist_ok=True)
  for i in range(n_train):
    write_image(os.path.join(root, f"img{i:02d}.jpg"), h=60, w=90, seed=i)
    write_pcm_wav(os.path.join(root, f"img{i:02d}.wav"), train_pcm(i))
  write_video(os.path.join(root, "clip00.mp4"), seconds=4.0, audio=tone(4.0))
  boxes = {"ann00": [[10, 5, 50, 40]], "ann01": [[0, 0, 30, 30], [40, 20, 200, 90]]}
  for k, (ident, b) in enumerate(boxes.items()):
    write_image(os.path.join(root, f"{ident}.png"), h=80, w=120, seed=50 + k)
    write_pcm_wav(os.path.join(root, f"{ident}{'.flac' if k == 0 else '.wav'}"),
                  train_pcm(20 + k, seconds=12.0))
    with open(os.path.join(root, f"{ident}.json"), "w") as f:
      json.dump({"boxes": b}, f)
  with open(os.path.join(root, "README.txt"), "w") as f:
    f.write("unrelated file\n")
  return boxes


def flickr_layout(root, n_train: int = 11) -> dict:
  """`flickr_soundnet` manual_dir: flickr_10k.txt with n_train ids (one of them
  also a test id), 3 test ids of which `t2` lacks its XML."""
  os.makedirs(os.path.join(root, "frames"), exist_ok=True)
  os.makedirs(os.path.join(root, "audio"), exist_ok=True)
  os.makedirs(os.path.join(root, "Annotations"), exist_ok=True)
  train_ids = [f"{1000 + i}" for i in range(n_train)]
  for i, ident in enumerate(train_ids):
    write_image(os.path.join(root, "frames", ident + ".jpg"), h=64, w=96, seed=i)
    write_pcm_wav(os.path.join(root, "audio", ident + ".wav"), train_pcm(i))
  xml_boxes = {"t0": ([10, 20, 100, 200], [30, 40, 256, 250]),
               "t1": ([0, 0, 128, 128], [64, 64, 200, 220])}
  for k, ident in enumerate(["t0", "t1", "t2"]):
    write_image(os.path.join(root, "frames", ident + ".jpg"), h=70, w=100, seed=30 + k)
    write_pcm_wav(os.path.join(root, "audio", ident + ".wav"), train_pcm(30 + k, seconds=12.0))
    if ident in xml_boxes:
      a, b = xml_boxes[ident]
      with open(os.path.join(root, "Annotations", ident + ".xml"), "w") as f:
        f.write(FLICKR_XML.format(id=ident, a=a, b=b))
  with open(os.path.join(root, "flickr_10k.txt"), "w") as f:
    f.write("\n".join(train_ids + ["t1"]) + "\n")
  with open(os.path.join(root, "flickr_test.txt"), "w") as f:
    f.write("t0\nt1\nt2\n")
  return {"train_ids": train_ids, "xml": {k: FLICKR_XML.format(id=k, a=a, b=b)
                                          for k, (a, b) in xml_boxes.items()}}


def vggsound_layout(root, n_train: int = 10) -> dict:
  """`vggsound` + `vggss` manual_dir: n_train mp4 clips (video + audio) and a
  vggss.json of 3 ids: v0 (a clip, out-of-range and inverted boxes), v1
  (frame + wav), v2 (no media)."""
  import json
  os.makedirs(os.path.join(root, "video"), exist_ok=True)
  os.makedirs(os.path.join(root, "frames"), exist_ok=True)
  os.makedirs(os.path.join(root, "audio"), exist_ok=True)
  ids = [f"yt{i:03d}_{i * 10:06d}" for i in range(n_train)]
  for i, ident in enumerate(ids):
    write_video(os.path.join(root, "video", ident + ".mp4"), seconds=4.0,
                audio=tone(4.0, freq=300.0 + 50 * i), size=(48, 80))
  write_video(os.path.join(root, "video", "v0.mp4"), seconds=4.0, audio=tone(4.0), size=(48, 80))
  write_image(os.path.join(root, "frames", "v1.jpg"), h=50, w=70)
  write_pcm_wav(os.path.join(root, "audio", "v1.wav"), train_pcm(40, seconds=11.0))
  annotations = [
      {"file": "v0", "class": "playing violin", "bbox": [[0.1, -0.05, 0.6, 1.2], [0.9, 0.5, 0.2, 0.7]]},
      {"file": "v1", "class": "dog barking", "bbox": [[0.25, 0.25, 0.75, 0.75]]},
      {"file": "v2", "class": "rain", "bbox": [[0.0, 0.0, 1.0, 1.0]]},
  ]
  with open(os.path.join(root, "vggss.json"), "w") as f:
    json.dump(annotations, f)
  with open(os.path.join(root, "vggsound_144k.txt"), "w") as f:
    f.write("\n".join(ids[:n_train - 1]) + "\n")
  return {"ids": ids, "annotations": annotations}


def grid_image(colours, cell: int = 32) -> np.ndarray:
  """2x2 grid of flat cells (row-major colours), RGB uint8."""
  img = np.zeros((2 * cell, 2 * cell, 3), np.uint8)
  for k, colour in enumerate(colours):
    r, c = divmod(k, 2)
    img[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = colour
  return img


def music_layout(root, n_train: int = 10) -> dict:
  """`music_synthetic` manual_dir: n_train grids + 1.5 s mixtures in train/,
  two test grids whose sounding cells (json boxes) are cells (0, 3) and (1, 2)."""
  import json
  rng = np.random.default_rng(7)
  for split, n in (("train", n_train), ("test", 2)):
    os.makedirs(os.path.join(root, split), exist_ok=True)
    for i in range(n):
      ident = f"{split}{i:03d}"
      write_image(os.path.join(root, split, ident + ".png"),
                  grid_image(rng.integers(0, 256, (4, 3))))
      write_pcm_wav(os.path.join(root, split, ident + ".wav"), train_pcm(i, seconds=1.5))
  cells = {"test000": (0, 3), "test001": (1, 2)}
  boxes = {}
  for ident, pair in cells.items():
    boxes[ident] = [[32 * (k % 2), 32 * (k // 2), 32 * (k % 2) + 32, 32 * (k // 2) + 32]
                    for k in pair]
    with open(os.path.join(root, "test", ident + ".json"), "w") as f:
      json.dump({"boxes": boxes[ident]}, f)
  return boxes
