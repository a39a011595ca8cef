"""Command line: where in this image is the sound coming from?

  python -m soundloc_jax.localize --workdir=DIR --image=x.jpg --audio=y.wav \\
      [--out=overlay.png] [--step=N]
  python -m soundloc_jax.localize --workdir=DIR --video=clip.mp4 [--time=SECONDS]

Loads the trained student of `DIR` (`soundloc_jax.inference.load`), runs it on
the image and the audio exactly as the evaluator runs a test example, writes
a heatmap overlay of the model's view (the centre crop) and prints the
loudest point in the original image's pixels on one line. Errors a user can
fix print one line on stderr (naming the file) and exit with code 2.

Video (`--video`, decoded with PyAV): the frame shown at `--time` (default:
the middle of the video, as the builders take it) and the run's clip length of
audio centred on it (`audio.window_around`, as the builders pair them); a
separate `--audio` file replaces the video's sound track.
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
VIDEO_HINT = "this is a video: pass it as --video (frame and sound track are taken from it)"

EPILOG = f"""\
Images: anything PIL reads (JPEG, PNG, WebP, TIFF, BMP, ...); CMYK, grayscale,
palette and transparent images are converted to RGB (alpha dropped), the EXIF
orientation is applied, and images over {MAX_MEGAPIXELS} megapixels are refused.
Audio: {', '.join(e[1:] for e in AUDIO_EXTENSIONS)} via soundfile, any sample rate
(resampled to the run's rate), multichannel averaged to mono; only the first
clip the model was trained with (config.audio.clip_seconds) is used.
Video (--video FILE: {', '.join(e[1:] for e in VIDEO_EXTENSIONS)}; decoded with
PyAV): the frame at --time seconds (default: the middle) and
config.audio.clip_seconds of the sound track centred on it; --audio FILE uses
that file's sound instead.
The printed peak is the heatmap's maximum mapped back through the centre crop
to the (EXIF-rotated) image's pixels: x = column, y = row, (0, 0) = top left.
Exit codes: 0 ok, 2 bad input / workdir (one line on stderr)."""


class _UserError(Exception):
  """A one-line problem with the command line's inputs."""


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    self.exit(2, f"error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m soundloc_jax.localize",
              description="Localize the sound source of an audio clip in an image with a "
                          "trained soundloc_jax model; writes a heatmap overlay and prints "
                          "the peak.",
              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="training workdir (config.json + checkpoints/)")
  p.add_argument("--image", default=None, help="image file (read with PIL)")
  p.add_argument("--audio", default=None,
                 help=f"audio file ({', '.join(e[1:] for e in AUDIO_EXTENSIONS)})")
  p.add_argument("--video", default=None,
                 help="video file: its frame at --time and the sound around it "
                      "(instead of --image; --audio optional)")
  p.add_argument("--time", type=float, default=None,
                 help="--video: seconds into the video (default: the middle)")
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


def read_video(path: str, time_s, clip_seconds):
  """`(frame uint8 [H, W, 3], waveform, rate)` of a video: the frame at
  `time_s` and `clip_seconds` of its sound track centred there."""
  from soundloc_jax import audio, media
  ext = os.path.splitext(path)[1].lower()
  if ext not in VIDEO_EXTENSIONS:
    raise _UserError(f"video file {path}: unsupported extension {ext or '(none)'!r}; "
                     f"use one of {', '.join(VIDEO_EXTENSIONS)}")
  if time_s is not None and time_s < 0:
    raise _UserError(f"--time {time_s}: must be >= 0 seconds")
  if not os.path.isfile(path):
    raise _UserError(f"video file {path} does not exist")
  frame = media.read_video_frame(path, time_s)
  if clip_seconds is None:
    return frame, None, None
  waveform, rate = media.read_audio(path)
  if time_s is None:  # the middle of the video, where read_video_frame looked
    time_s = _video_seconds(path) / 2
  return frame, audio.window_around(waveform, rate, time_s, clip_seconds), rate


def _video_seconds(path: str) -> float:
  from soundloc_jax import media
  import av
  with av.open(path) as container:
    return media.video_duration(container, container.streams.video[0])


def _check_sources(args) -> None:
  if args.video is not None:
    if args.image is not None:
      raise _UserError("give --video or --image, not both")
  else:
    if args.time is not None:
      raise _UserError("--time only applies to --video")
    missing = [f"--{k}" for k in ("image", "audio") if getattr(args, k) is None]
    if missing:
      raise _UserError(f"missing {' and '.join(missing)} (or give --video)")


def run(args) -> str:
  """Does the work for parsed `args`; returns the line to print."""
  _check_sources(args)
  if args.video is not None:
    return _run_video(args)
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
  return _localize_and_write(args, image, waveform, rate, args.image)


def _run_video(args) -> str:
  from soundloc_jax import inference
  config = inference.read_config(_workdir_or_raise(args.workdir))
  clip = None if args.audio is not None else float(config.audio.clip_seconds)
  image, waveform, rate = read_video(args.video, args.time, clip)
  if args.audio is not None:
    waveform, rate = read_audio(
        args.audio, lambda r: inference.samples_needed(config.audio, r))
  return _localize_and_write(args, image, waveform, rate, args.video)


def _localize_and_write(args, image, waveform, rate, source: str) -> str:
  from soundloc_jax import evaluation, inference, train
  out = args.out or default_out(source)
  _check_out(out)
  train.enable_compilation_cache()
  localizer = inference.load(args.workdir, step=args.step)
  heat = localizer.localize(image, waveform, rate)
  x, y = localizer.peak(heat, image.shape)
  crop = display_crop(image, localizer.crop_box(image.shape))
  title = f"{os.path.basename(source)}\npeak (x={x}, y={y})"
  try:
    evaluation.overlay_grid(crop[None], heat[None], None, [title], out, ncols=1)
  except OSError as e:
    raise _UserError(f"overlay {out}: cannot write it ({_first_line(e)})") from None
  return f"peak (x={x}, y={y}) in {source}; overlay written to {out}"


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
