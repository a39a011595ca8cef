"""Command line: where in this image is the sound coming from?

  python -m soundloc_jax.localize --workdir=DIR --image=x.jpg --audio=y.wav \\
      [--out=overlay.png] [--step=N]

Loads the trained student of `DIR` (`soundloc_jax.inference.load`), runs it on
the image and the audio exactly as the evaluator runs a test example, writes
a heatmap overlay of the model's view (the centre crop) and prints the
loudest point in the original image's pixels on one line. Errors a user can
fix print one line on stderr (naming the file) and exit with code 2.

Video: not supported. None of the installed packages decodes video (no PyAV,
ffmpeg, OpenCV or imageio); extract a frame and the audio track first.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

MAX_MEGAPIXELS = 50
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".mp3")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg",
                    ".wmv", ".flv", ".3gp", ".ts")
OUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".pdf", ".svg")
VIDEO_HINT = ("video input is not supported (no video decoder such as PyAV, ffmpeg or "
              "OpenCV is installed); extract a frame and the audio first, e.g. "
              "`ffmpeg -ss 1 -i clip.mp4 -frames:v 1 frame.png` and "
              "`ffmpeg -i clip.mp4 -vn -ac 1 audio.wav`")

EPILOG = f"""\
Images: anything PIL reads (JPEG, PNG, WebP, TIFF, BMP, ...); CMYK, grayscale,
palette and transparent images are converted to RGB (alpha dropped), the EXIF
orientation is applied, and images over {MAX_MEGAPIXELS} megapixels are refused.
Audio: {', '.join(e[1:] for e in AUDIO_EXTENSIONS)} via soundfile, any sample rate
(resampled to the run's rate), multichannel averaged to mono; only the first
clip the model was trained with (config.audio.clip_seconds) is used.
Video (--video clip.mp4): NOT available. No installed package decodes video
(PyAV, ffmpeg, OpenCV and imageio are absent); extract a frame and the audio:
  ffmpeg -ss 1 -i clip.mp4 -frames:v 1 frame.png
  ffmpeg -i clip.mp4 -vn -ac 1 audio.wav
The printed peak is the heatmap's maximum mapped back through the centre crop
to the (EXIF-rotated) image's pixels: x = column, y = row, (0, 0) = top left.
Exit codes: 0 ok, 2 bad input / workdir (one line on stderr)."""


class _UserError(Exception):
  """A one-line problem with the command line's inputs."""


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    if "--video" in message:
      message = f"--video: {VIDEO_HINT}"
    self.exit(2, f"error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m soundloc_jax.localize",
              description="Localize the sound source of an audio clip in an image with a "
                          "trained soundloc_jax model; writes a heatmap overlay and prints "
                          "the peak.",
              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="training workdir (config.json + checkpoints/)")
  p.add_argument("--image", required=True, help="image file (read with PIL)")
  p.add_argument("--audio", required=True,
                 help=f"audio file ({', '.join(e[1:] for e in AUDIO_EXTENSIONS)})")
  p.add_argument("--out", default=None,
                 help="overlay image to write (default: <image dir>/<image name>_soundloc.png)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  return p


def _check_file(path: str, what: str) -> str:
  if not os.path.exists(path):
    raise _UserError(f"{what} file {path} does not exist")
  if not os.path.isfile(path):
    raise _UserError(f"{what} file {path} is not a regular file")
  if not os.access(path, os.R_OK):
    raise _UserError(f"{what} file {path} is not readable (permission denied)")
  ext = os.path.splitext(path)[1].lower()
  if ext in VIDEO_EXTENSIONS:
    raise _UserError(f"{what} file {path}: {VIDEO_HINT}")
  if os.path.getsize(path) == 0:
    raise _UserError(f"{what} file {path} is empty (0 bytes)")
  return ext


def read_image(path: str):
  """uint8 `[H, W, 3]` of an image file (RGB, EXIF orientation applied)."""
  import numpy as np
  from PIL import Image, ImageOps
  ext = _check_file(path, "image")
  Image.init()
  if ext not in Image.registered_extensions():
    raise _UserError(f"image file {path}: unsupported extension {ext or '(none)'!r}; "
                     "use an image format PIL reads, e.g. .jpg, .png, .webp, .bmp, .tif")
  limit = MAX_MEGAPIXELS * 1_000_000
  w = h = None
  old_limit = Image.MAX_IMAGE_PIXELS
  try:
    Image.MAX_IMAGE_PIXELS = limit  # PIL's decompression-bomb guard
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as im:
        w, h = im.size
        if w * h > limit:
          raise Image.DecompressionBombError(f"{w}x{h}")
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
          x = np.asarray(im, np.float64)
          top = x.max() if x.size and x.max() > 255 else 255.0
          im = Image.fromarray(np.clip(x / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
        if im.mode == "P" and "transparency" in im.info:
          im = im.convert("RGBA")
        image = np.asarray(im.convert("RGB"))
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    size = f"{w}x{h} pixels" if w is not None else _first_line(e)
    raise _UserError(f"image file {path} is over the {MAX_MEGAPIXELS} megapixel limit "
                     f"({size}); downscale it first") from None
  except _UserError:
    raise
  except Exception as e:  # PIL raises many types on bad data (OSError, SyntaxError, ...)
    raise _UserError(f"image file {path} is not a readable image "
                     f"({type(e).__name__}: {_first_line(e)})") from None
  finally:
    Image.MAX_IMAGE_PIXELS = old_limit
  if image.size == 0:
    raise _UserError(f"image file {path} has no pixels")
  return image


def read_audio(path: str, frames_for_rate=None):
  """`(waveform [n] float32 mono, sample_rate)`; with `frames_for_rate` (rate ->
  frame count, see `inference.samples_needed`) only that many leading frames."""
  import soundfile as sf
  ext = _check_file(path, "audio")
  if ext not in AUDIO_EXTENSIONS:
    raise _UserError(f"audio file {path}: unsupported extension {ext or '(none)'!r}; "
                     f"use one of {', '.join(AUDIO_EXTENSIONS)}")
  try:
    with sf.SoundFile(path) as f:
      rate = f.samplerate
      frames = f.frames
      want = frames_for_rate(rate) if frames_for_rate is not None else -1
      data = f.read(frames=want if want and want > 0 else -1, dtype="float32",
                    always_2d=True)
  except Exception as e:  # libsndfile errors (sf.LibsndfileError, RuntimeError, ...)
    raise _UserError(f"audio file {path} is not readable audio "
                     f"({type(e).__name__}: {_first_line(e)})") from None
  if frames == 0 or data.shape[0] == 0:
    raise _UserError(f"audio file {path} has no samples (zero-length audio)")
  if rate <= 0:
    raise _UserError(f"audio file {path} has an invalid sample rate {rate}")
  import numpy as np
  wave = data.mean(axis=1)
  if not np.all(np.isfinite(wave)):
    raise _UserError(f"audio file {path} has NaN or infinite samples")
  return wave, rate


def default_out(image_path: str) -> str:
  stem, _ = os.path.splitext(image_path)
  return f"{stem}_soundloc.png"


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else "no details"


def _check_out(out: str) -> None:
  ext = os.path.splitext(out)[1].lower()
  if ext not in OUT_EXTENSIONS:
    raise _UserError(f"--out {out}: unsupported extension {ext or '(none)'!r}; use "
                     f"{', '.join(OUT_EXTENSIONS)}")
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise _UserError(f"overlay {out}: folder {parent} does not exist (choose one with --out)")
  if not os.access(parent, os.W_OK):
    raise _UserError(f"overlay {out}: folder {parent} is not writable (choose one with --out)")


def display_crop(image, box, max_side: int = 512):
  """The part of `image` the model sees (`box` from `inference.crop_box`), at
  most `max_side` pixels a side, for the overlay."""
  import numpy as np
  from PIL import Image
  h, w = image.shape[:2]
  x0, y0 = max(0, int(round(box[0]))), max(0, int(round(box[1])))
  x1, y1 = min(w, max(x0 + 1, int(round(box[2])))), min(h, max(y0 + 1, int(round(box[3]))))
  crop = image[y0:y1, x0:x1]
  side = max(crop.shape[:2])
  if side > max_side:
    scale = max_side / side
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    crop = np.asarray(Image.fromarray(crop).resize(size, Image.BILINEAR))
  return np.ascontiguousarray(crop)


def run(args) -> str:
  """Does the work for parsed `args`; returns the line to print."""
  image = read_image(args.image)
  # Fail fast on bad audio before the (slower) model load; the exact clip
  # length is known once the config is read.
  from soundloc_jax import inference
  try:
    config = inference.read_config(_workdir_or_raise(args.workdir))
  except inference.UserError:
    config = None  # load() below reports it with full detail
  needed = ((lambda rate: inference.samples_needed(config.audio, rate)) if config is not None
            else None)
  waveform, rate = read_audio(args.audio, needed)
  out = args.out or default_out(args.image)
  _check_out(out)

  from soundloc_jax import evaluation, train
  train.enable_compilation_cache()
  localizer = inference.load(args.workdir, step=args.step)
  heat = localizer.localize(image, waveform, rate)
  x, y = localizer.peak(heat, image.shape)
  crop = display_crop(image, localizer.crop_box(image.shape))
  title = f"{os.path.basename(args.image)}\npeak (x={x}, y={y})"
  try:
    evaluation.overlay_grid(crop[None], heat[None], None, [title], out, ncols=1)
  except OSError as e:
    raise _UserError(f"overlay {out}: cannot write it ({_first_line(e)})") from None
  return f"peak (x={x}, y={y}) in {args.image}; overlay written to {out}"


def _workdir_or_raise(workdir: str) -> str:
  from soundloc_jax import inference
  path = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(path):
    raise inference.WorkdirError(f"workdir {path} does not exist or is not a directory")
  return path


def main(argv=None) -> int:
  """Entry point; returns the exit code (0, or 2 for a user error)."""
  args = _parser().parse_args(argv)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax info lines
  from soundloc_jax.errors import UserError
  try:
    line = run(args)
  except (_UserError, UserError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  print(line, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
