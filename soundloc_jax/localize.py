"""Command line: where in this image is the sound coming from?

  python -m soundloc_jax.localize --workdir=DIR --image=x.jpg --audio=y.wav \\
      [--out=overlay.png] [--step=N]
  python -m soundloc_jax.localize --workdir=DIR --video=clip.mp4 [--time=SECONDS]

Loads the trained student of `DIR` (`soundloc_jax.inference.load`), reads the
files with the project's one decoder (`soundloc_jax.media`), runs the model on
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

from soundloc_jax import media
from soundloc_jax.errors import InputError, UserError

MAX_MEGAPIXELS = 50
OUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".pdf", ".svg")
VIDEO_HINT = "this is a video: pass it as --video (frame and sound track are taken from it)"

EPILOG = f"""\
Images: anything PIL reads (JPEG, PNG, WebP, TIFF, BMP, ...); CMYK, grayscale,
palette and transparent images are converted to RGB (alpha dropped), the EXIF
orientation is applied, and images over {MAX_MEGAPIXELS} megapixels are refused.
Audio: {', '.join(e[1:] for e in media.AUDIO_EXTENSIONS)} (decoded with PyAV), any sample
rate (resampled to the run's rate), multichannel averaged to mono; only the first
clip the model was trained with (config.audio.clip_seconds) is used.
Video (--video FILE: {', '.join(e[1:] for e in media.VIDEO_EXTENSIONS)}; decoded with
PyAV): the frame at --time seconds (default: the middle) and
config.audio.clip_seconds of the sound track centred on it; --audio FILE uses
that file's sound instead.
The printed peak is the heatmap's maximum mapped back through the centre crop
to the (EXIF-rotated) image's pixels: x = column, y = row, (0, 0) = top left.
Exit codes: 0 ok, 2 bad input / workdir (one line on stderr)."""


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
                 help=f"audio file ({', '.join(e[1:] for e in media.AUDIO_EXTENSIONS)})")
  p.add_argument("--video", default=None,
                 help="video file: its frame at --time and the sound around it "
                      "(instead of --image; --audio optional)")
  p.add_argument("--time", type=float, default=None,
                 help="--video: seconds into the video (default: the middle)")
  p.add_argument("--out", default=None,
                 help="overlay image to write (default: <image dir>/<image name>_soundloc.png)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  return p


def _check_file(path: str, what: str, extensions) -> None:
  """What the decoder cannot say itself: the file's kind from its extension."""
  if os.path.isdir(path):
    raise InputError(f"{what} file {path} is not a regular file")
  if os.path.exists(path) and not os.access(path, os.R_OK):
    raise InputError(f"{what} file {path} is not readable (permission denied)")
  ext = os.path.splitext(path)[1].lower()
  if what != "video" and ext in media.VIDEO_EXTENSIONS:
    raise InputError(f"{what} file {path}: {VIDEO_HINT}")
  if ext not in extensions:
    raise InputError(f"{what} file {path}: unsupported extension {ext or '(none)'!r}; "
                     f"use one of {', '.join(extensions)}")


def read_image(path: str):
  """uint8 `[H, W, 3]` of an image file (RGB, EXIF orientation applied, at most
  MAX_MEGAPIXELS)."""
  from PIL import Image
  Image.init()
  _check_file(path, "image", tuple(Image.registered_extensions()))
  return media.read_image(path, exif_transpose=True, max_megapixels=MAX_MEGAPIXELS)


def read_audio(path: str, seconds: float | None = None):
  """`(waveform [n] float32 mono, sample_rate)`: with `seconds`, only the first
  that many seconds are decoded."""
  _check_file(path, "audio", media.AUDIO_EXTENSIONS)
  return media.read_audio(path, duration=seconds)


def default_out(image_path: str) -> str:
  stem, _ = os.path.splitext(image_path)
  return f"{stem}_soundloc.png"


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else "no details"


def _check_out(out: str) -> None:
  ext = os.path.splitext(out)[1].lower()
  if ext not in OUT_EXTENSIONS:
    raise InputError(f"--out {out}: unsupported extension {ext or '(none)'!r}; use "
                     f"{', '.join(OUT_EXTENSIONS)}")
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise InputError(f"overlay {out}: folder {parent} does not exist (choose one with --out)")
  if not os.access(parent, os.W_OK):
    raise InputError(f"overlay {out}: folder {parent} is not writable (choose one with --out)")


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
  from soundloc_jax import audio
  _check_file(path, "video", media.VIDEO_EXTENSIONS)
  if time_s is not None and time_s < 0:
    raise InputError(f"--time {time_s}: must be >= 0 seconds")
  frame = media.read_video_frame(path, time_s)
  if clip_seconds is None:
    return frame, None, None
  waveform, rate = media.read_audio(path)
  if time_s is None:  # the middle of the video, where read_video_frame looked
    time_s = _video_seconds(path) / 2
  return frame, audio.window_around(waveform, rate, time_s, clip_seconds), rate


def _video_seconds(path: str) -> float:
  import av
  with av.open(path) as container:
    return media.video_duration(container, container.streams.video[0])


def _check_sources(args) -> None:
  if args.video is not None:
    if args.image is not None:
      raise InputError("give --video or --image, not both")
  else:
    if args.time is not None:
      raise InputError("--time only applies to --video")
    missing = [f"--{k}" for k in ("image", "audio") if getattr(args, k) is None]
    if missing:
      raise InputError(f"missing {' and '.join(missing)} (or give --video)")


def run(args) -> str:
  """Does the work for parsed `args`; returns the line to print."""
  _check_sources(args)
  if args.video is not None:
    return _run_video(args)
  image = read_image(args.image)
  # Fail fast on bad audio before the (slower) model load; the exact clip
  # length is known once the config is read.
  from soundloc_jax import inference, workdir
  try:
    config = workdir.read_config(_workdir_or_raise(args.workdir))
  except UserError:
    config = None  # load() below reports it with full detail
  seconds = inference.seconds_needed(config.audio) if config is not None else None
  waveform, rate = read_audio(args.audio, seconds)
  return _localize_and_write(args, image, waveform, rate, args.image)


def _run_video(args) -> str:
  from soundloc_jax import inference, workdir
  config = workdir.read_config(_workdir_or_raise(args.workdir))
  clip = None if args.audio is not None else float(config.audio.clip_seconds)
  image, waveform, rate = read_video(args.video, args.time, clip)
  if args.audio is not None:
    waveform, rate = read_audio(args.audio, inference.seconds_needed(config.audio))
  return _localize_and_write(args, image, waveform, rate, args.video)


def _localize_and_write(args, image, waveform, rate, source: str) -> str:
  from soundloc_jax import distributed, inference
  from soundloc_jax.evaluation import plots
  out = args.out or default_out(source)
  _check_out(out)
  distributed.enable_compilation_cache()
  localizer = inference.load(args.workdir, step=args.step)
  heat = localizer.localize(image, waveform, rate)
  x, y = localizer.peak(heat, image.shape)
  crop = display_crop(image, localizer.crop_box(image.shape))
  title = f"{os.path.basename(source)}\npeak (x={x}, y={y})"
  try:
    plots.overlay_grid(crop[None], heat[None], None, [title], out, ncols=1)
  except OSError as e:
    raise InputError(f"overlay {out}: cannot write it ({_first_line(e)})") from None
  return f"peak (x={x}, y={y}) in {source}; overlay written to {out}"


def _workdir_or_raise(workdir: str) -> str:
  from soundloc_jax.errors import WorkdirError
  path = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(path):
    raise WorkdirError(f"workdir {path} does not exist or is not a directory")
  return path


def main(argv=None) -> int:
  """Entry point; returns the exit code (0, or 2 for a user error)."""
  args = _parser().parse_args(argv)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax info lines
  try:
    line = run(args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  print(line, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
