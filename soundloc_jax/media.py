"""Media decoding, the one decoder of the project: builders, inference
(`localize`) and the notebook read files with it. Audio and video with PyAV,
images with PIL.

PyAV bundles FFmpeg, so wav/flac/mp3/ogg/m4a/aiff and the audio track of
mp4/mkv/webm/avi/... all decode on a fresh machine. `read_audio` returns a
mono float32 waveform (the mean of its channels, optionally resampled to a
given rate by FFmpeg's resampler) and its sample rate; `read_video_frame` one
RGB uint8 frame (by default the one at the middle of the video, as VGGSound
builders take); `read_image` an RGB uint8 image: grayscale, CMYK, palette and
alpha images are converted (alpha dropped), 16-bit and float images are
scaled to 0..255; the EXIF orientation is ignored by default, as in the
peers' `PIL.Image.open(...).convert("RGB")` that the builders follow, and
applied with `exif_transpose=True` (what a user's photo needs, `localize`);
`max_megapixels` refuses larger images before decoding them (a
decompression-bomb guard). Every file a user can get wrong -- missing, empty,
corrupt, too large, without the needed stream or without any decodable sample
-- raises `MediaError` (a `DatasetError`) whose one-line message names the
file and what is wrong. The extension lists say what folders are scanned for
(`builder_lib.scan_folder`) and what `localize` accepts.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from soundloc_jax.errors import MediaError

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".m4a", ".aac", ".opus", ".aif",
                    ".aiff")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".wmv",
                    ".flv", ".3gp", ".ts")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _check_file(path) -> str:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise MediaError(f"{path}: file not found")
  if os.path.getsize(path) == 0:
    raise MediaError(f"{path}: file is empty (0 bytes)")
  return path


def _open(path: str):
  import av
  try:
    return av.open(path)
  except (av.error.FFmpegError, OSError, ValueError) as e:
    raise MediaError(f"{path}: cannot be opened as audio/video ({_reason(e)})") from e


def _reason(e: Exception) -> str:
  return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()


def read_audio(path, *, start: float | None = None, duration: float | None = None,
               sample_rate: int | None = None) -> tuple[np.ndarray, int]:
  """`(waveform float32 [n], rate)`: the first audio stream of `path`, mono.

  `start` / `duration` (seconds) select a window (decoding stops after it);
  `sample_rate` resamples (FFmpeg's resampler), default the file's own rate.
  A window past the end of the audio returns what exists; no sample at all
  is an error.
  """
  import av
  path = _check_file(path)
  with _open(path) as container:
    streams = container.streams.audio
    if not streams:
      raise MediaError(f"{path}: has no audio stream")
    stream = streams[0]
    rate = int(sample_rate or stream.rate or stream.codec_context.sample_rate or 0)
    if rate <= 0:
      raise MediaError(f"{path}: audio stream has no sample rate")
    first = int(round(max(start or 0.0, 0.0) * rate))
    stop = None if duration is None else first + int(round(duration * rate))
    # Planar float at the target rate, channels kept: the mean of the channels
    # is the mono signal (FFmpeg's own stereo->mono downmix scales by 1/sqrt(2)).
    resampler = av.AudioResampler(format="fltp", rate=rate)
    chunks, total = [], 0
    try:
      for frame in container.decode(stream):
        for out in resampler.resample(frame):
          chunk = out.to_ndarray().mean(axis=0, dtype=np.float32)
          chunks.append(chunk)
          total += chunk.size
        if stop is not None and total >= stop:
          break
      else:
        for out in resampler.resample(None):  # flush the resampler's delay line
          chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
    except (av.error.FFmpegError, ValueError) as e:
      raise MediaError(f"{path}: corrupt audio stream ({_reason(e)})") from e
  waveform = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
  waveform = waveform[first:stop]
  if waveform.size == 0:
    where = "" if not first else f" after {start} s"
    raise MediaError(f"{path}: audio stream has no samples{where}")
  if not np.all(np.isfinite(waveform)):
    raise MediaError(f"{path}: audio has NaN or infinite samples")
  return waveform, rate


def read_video_frame(path, time_s: float | None = None) -> np.ndarray:
  """RGB uint8 `[H, W, 3]`: the frame shown at `time_s` seconds (default: the
  middle of the video), i.e. the last frame starting at or before it."""
  import av
  path = _check_file(path)
  with _open(path) as container:
    streams = container.streams.video
    if not streams:
      raise MediaError(f"{path}: has no video stream")
    stream = streams[0]
    if time_s is None:
      length = video_duration(container, stream)
      time_s = length / 2 if length else 0.0
    chosen = None
    try:
      # Seek to the keyframe before the target, then decode forward to it.
      if time_s > 0 and stream.time_base:
        container.seek(int(time_s / stream.time_base), stream=stream, backward=True)
      for frame in container.decode(stream):
        if chosen is not None and frame.time is not None and frame.time > time_s + 1e-6:
          break
        chosen = frame
    except (av.error.FFmpegError, ValueError) as e:
      raise MediaError(f"{path}: corrupt video stream ({_reason(e)})") from e
    if chosen is None:
      raise MediaError(f"{path}: video stream has no decodable frame")
    return chosen.to_ndarray(format="rgb24")


def video_duration(container, stream) -> float:
  """Seconds of `stream` (its own duration, else the container's), 0 if unknown."""
  if stream.duration and stream.time_base:
    return float(stream.duration * stream.time_base)
  if container.duration:
    return container.duration / 1_000_000  # av.time_base: microseconds
  return 0.0


def read_image(path, *, exif_transpose: bool = False,
               max_megapixels: float | None = None) -> np.ndarray:
  """RGB uint8 `[H, W, 3]` of an image file (any mode PIL reads; module docstring)."""
  from PIL import Image, ImageOps, UnidentifiedImageError
  path = _check_file(path)
  limit = None if max_megapixels is None else int(max_megapixels * 1_000_000)
  old_limit = Image.MAX_IMAGE_PIXELS
  size = None
  try:
    if limit is not None:
      Image.MAX_IMAGE_PIXELS = limit  # PIL's own guard, for formats that decode eagerly
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as image:
        size = image.size
        if limit is not None and size[0] * size[1] > limit:
          raise Image.DecompressionBombError(f"{size[0]}x{size[1]}")
        image.load()
        if exif_transpose:
          image = ImageOps.exif_transpose(image)
        return np.asarray(_to_rgb(image), dtype=np.uint8)
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    pixels = f"{size[0]}x{size[1]} pixels" if size else _reason(e)
    raise MediaError(f"{path}: image is over the {max_megapixels:g} megapixel limit ({pixels}); "
                     "downscale it first") from None
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise MediaError(f"{path}: not a readable image ({_reason(e)})") from e
  finally:
    Image.MAX_IMAGE_PIXELS = old_limit


def _to_rgb(image):
  """RGB PIL image: 16-bit / float modes scaled to 0..255 (their maximum, or 255
  if below), a palette with transparency through RGBA (alpha then dropped)."""
  from PIL import Image
  if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
    x = np.asarray(image, np.float64)
    top = x.max() if x.size and x.max() > 255 else 255.0
    image = Image.fromarray(np.clip(x / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
  if image.mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")
  return image.convert("RGB")
