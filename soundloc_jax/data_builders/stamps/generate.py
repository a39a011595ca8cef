"""One `stamps` example: a composed image, its sound, its boxes. Pure functions
of (catalog, split plan, options, split, index).

Image (`image_size` S, default 96): a background made from the package's own
imagery, then one SOUNDING object and one or two SILENT objects of other
groups, each a whole stamp scaled to a longer side of `OBJECT_SIZE` x S,
optionally mirrored (where its .dat allows), at a random position inside the
image; object boxes overlap by at most `MAX_OVERLAP` of the smaller box.
Backgrounds (`BACKGROUNDS`, one drawn per image, over a two-colour gradient):
`blur` 2-5 large stamps, Gaussian-blurred; `tiles` one small stamp tiled,
faded and lightly blurred; `zoom` a magnified, blurred crop of one stamp
(photo texture). Last, Gaussian pixel noise (sigma `PIXEL_NOISE`). Background
stamps never come from the sounding group.

Boxes: an object's box is the bounding box of its pasted alpha >= `BOX_ALPHA`
(0.25), in pixels of the S x S image, half-open `[x0, y0, x1, y1]`; how a
stamp becomes its pasted alpha is `catalog.read_stamp` (crop to alpha > 0,
Lanczos to at most 2 S) then `scaled_stamp` (bilinear to the drawn size,
mirror).

Sound (`clip_seconds` of the front end, default 1 s at 16 kHz): a recording of
the sounding object's GROUP (a group with several recordings draws one), at a
random speed (`SPEED`: pitch and duration change together), a random crop of
`clip_seconds` among its loud windows (or, if shorter, placed at a random
onset), 10 ms fades; mixed with either coloured noise (white / pink / brown)
at `NOISE_SNR_DB`, or (probability `DISTRACTOR_P`) a quieter recording of a
group that is nowhere in the image at `DISTRACTOR_SNR_DB` plus faint noise at
`FLOOR_SNR_DB`; SNRs are powers over each event's active span. The mix is
scaled to a random peak (`PEAK`) and quantised to 16 bits; the spectrogram is
`audio.log_spectrogram` of the quantised mix. A silent object's group never
sounds in its image (not even as the distractor).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from soundloc_jax import audio as audio_lib
from soundloc_jax import builder_lib
from soundloc_jax.errors import DatasetError

SPLITS = ("train", "validation", "test", "test_unseen", "test_offscreen", "test_unseen_offscreen")
# Off-screen splits: image i of the base split with a clip of a group that is
# nowhere in it (`offscreen_example`); no object sounds, no `gt_boxes`.
OFFSCREEN = {"test_offscreen": "test", "test_unseen_offscreen": "test_unseen"}
ANNOTATED = ("train", "test", "test_unseen")   # validation is stored without boxes
WAVEFORM_SPLITS = ("test", "test_unseen") + tuple(OFFSCREEN)  # store the 16-bit mix too

OBJECT_SIZE = (0.35, 0.65)      # longer side, fraction of S
MAX_OVERLAP = 0.1               # box intersection / smaller box area
TWO_SILENT_P = 0.3              # else one silent object
SILENT_FROM_SOUNDING_P = 0.5    # a silent object from a group that can sound (else silent-only)
BOX_ALPHA = 64                  # alpha (0..255) counted in the box
BACKGROUNDS = ("blur", "tiles", "zoom")
PIXEL_NOISE = (1.0, 6.0)        # Gaussian sigma, 0..255 levels
SPEED = (0.92, 1.08)
NOISE_SNR_DB = (5.0, 20.0)
DISTRACTOR_P = 0.3
DISTRACTOR_SNR_DB = (10.0, 20.0)
FLOOR_SNR_DB = (20.0, 30.0)
PEAK = (0.3, 0.9)
FADE_SECONDS = 0.01
LOUD_WINDOW = 0.5               # crops start where the window RMS >= this x the loudest window's


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which groups each split may use. `seen` / `unseen`: groups that can
  sound (train, validation, test sound `seen`; test_unseen sounds `unseen`);
  `silent_only`: groups without a usable recording. train / validation / test
  never show an `unseen` group at all (not as silent object or background)."""
  seen: tuple
  unseen: tuple
  silent_only: tuple

  def sounding(self, split: str) -> tuple:
    return self.unseen if split == "test_unseen" else self.seen

  def visible(self, split: str) -> tuple:
    """Groups that may appear in `split`'s images (silent objects, background)."""
    groups = self.seen + self.silent_only + (self.unseen if split == "test_unseen" else ())
    return tuple(sorted(groups))

  def audible(self, split: str) -> tuple:
    """Groups whose recordings may be a distractor in `split`."""
    return tuple(sorted(self.seen + (self.unseen if split == "test_unseen" else ())))


def make_plan(catalog, seed: int, unseen_fraction: float, unseen_groups=()) -> Plan:
  """`round(unseen_fraction * n)` (at least 1) of the n groups that can sound,
  drawn from `seed`, form test_unseen; the others are seen. A non-empty
  `unseen_groups` names the test_unseen groups instead (each must be a group
  that can sound, and at least one such group must stay seen)."""
  sounding = catalog.sounding_groups()
  if len(sounding) < 2:
    raise DatasetError(f"stamps: {catalog.root} has {len(sounding)} group(s) with a usable sound "
                       "effect; need at least 2 (one seen, one unseen)")
  if unseen_groups:
    unknown = sorted(set(unseen_groups) - set(sounding))
    if unknown:
      raise DatasetError(f"stamps: unseen_groups {unknown} are not groups that can sound in "
                         f"{catalog.root}; those are: {', '.join(sounding)}")
    if set(unseen_groups) >= set(sounding):
      raise DatasetError("stamps: unseen_groups holds every group that can sound; at least one "
                         "must stay seen")
    unseen = tuple(sorted(set(unseen_groups)))
  else:
    n_unseen = min(len(sounding) - 1, max(1, int(round(unseen_fraction * len(sounding)))))
    order = np.random.default_rng([seed, 7]).permutation(len(sounding))
    unseen = tuple(sorted(sounding[i] for i in order[:n_unseen]))
  seen = tuple(sorted(set(sounding) - set(unseen)))
  return Plan(seen=seen, unseen=unseen, silent_only=tuple(catalog.silent_only_groups()))


# ----------------------------------------------------------------------------
# Image.

def scaled_stamp(rgba: np.ndarray, longer_side: int, mirror: bool) -> np.ndarray:
  """A catalog stamp resized (bilinear, premultiplied alpha) so that its longer
  side is `longer_side`, mirrored left-right if asked. RGBA uint8."""
  from PIL import Image
  h, w = rgba.shape[:2]
  scale = longer_side / max(h, w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  im = Image.fromarray(rgba, "RGBA").resize(size, Image.Resampling.BILINEAR)
  if mirror:
    im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(im, np.uint8)


def alpha_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
  """`(x0, y0, x1, y1)` half-open box of alpha >= BOX_ALPHA (of alpha > 0 if
  no pixel reaches it)."""
  mask = alpha >= BOX_ALPHA
  if not mask.any():
    mask = alpha > 0
  ys, xs = np.nonzero(mask)
  return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _overlap_ok(boxes) -> bool:
  for i in range(len(boxes)):
    for j in range(i + 1, len(boxes)):
      a, b = boxes[i], boxes[j]
      iw = min(a[2], b[2]) - max(a[0], b[0])
      ih = min(a[3], b[3]) - max(a[1], b[1])
      if iw > 0 and ih > 0:
        smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
        if iw * ih > MAX_OVERLAP * smaller:
          return False
  return True


def _colour(rng) -> np.ndarray:
  import colorsys
  return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.1, 0.8), rng.uniform(0.25, 0.95)),
                  np.float32) * 255


def _composite(canvas: np.ndarray, rgba: np.ndarray, x: int, y: int, opacity: float = 1.0) -> None:
  """Alpha-blends `rgba` onto float RGB `canvas` (in place) with its top-left
  corner at (x, y); parts outside the canvas are dropped."""
  h, w = rgba.shape[:2]
  H, W = canvas.shape[:2]
  x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
  if x0 >= x1 or y0 >= y1:
    return
  src = rgba[y0 - y:y1 - y, x0 - x:x1 - x].astype(np.float32)
  a = src[..., 3:] / 255.0 * opacity
  canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - a) + src[..., :3] * a


def _blur(canvas: np.ndarray, radius: float) -> np.ndarray:
  from PIL import Image, ImageFilter
  im = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8))
  return np.asarray(im.filter(ImageFilter.GaussianBlur(radius)), np.float32)


def background(catalog, groups: list, size: int, rng) -> tuple[np.ndarray, dict]:
  """float32 `[S, S, 3]` background of stamps from `groups`, and its description."""
  top, bottom = _colour(rng), _colour(rng)
  t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
  canvas = np.broadcast_to(top * (1 - t) + bottom * t, (size, size, 3)).copy()
  kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]

  def pick():
    g = groups[int(rng.integers(len(groups)))]
    members = catalog.groups[g]
    return catalog.stamps[members[int(rng.integers(len(members)))]]

  used = []
  if kind == "blur":
    for _ in range(int(rng.integers(2, 6))):
      stamp = pick()
      used.append(stamp.path)
      im = scaled_stamp(stamp.rgba, int(round(rng.uniform(0.5, 1.5) * size)), bool(rng.random() < 0.5))
      x = int(rng.integers(-im.shape[1] // 2, size - im.shape[1] // 2 + 1))
      y = int(rng.integers(-im.shape[0] // 2, size - im.shape[0] // 2 + 1))
      _composite(canvas, im, x, y, rng.uniform(0.5, 1.0))
    canvas = _blur(canvas, rng.uniform(0.02, 0.05) * size)
  elif kind == "tiles":
    stamp = pick()
    used.append(stamp.path)
    im = scaled_stamp(stamp.rgba, max(4, int(round(rng.uniform(0.15, 0.3) * size))), False)
    step = max(im.shape[:2]) * rng.uniform(1.1, 1.6)
    opacity = rng.uniform(0.25, 0.6)
    shift = rng.uniform(0, step, 2)
    for row, y in enumerate(np.arange(-step + shift[0], size, step)):
      for x in np.arange(-step + shift[1] + (step / 2) * (row % 2), size, step):
        _composite(canvas, im, int(round(x)), int(round(y)), opacity)
    canvas = _blur(canvas, rng.uniform(0.005, 0.015) * size)
  else:  # zoom
    from PIL import Image
    stamp = pick()
    used.append(stamp.path)
    h, w = stamp.rgba.shape[:2]
    ch, cw = max(2, int(h * rng.uniform(0.25, 0.5))), max(2, int(w * rng.uniform(0.25, 0.5)))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(stamp.rgba[y:y + ch, x:x + cw], "RGBA").resize(
        (size, size), Image.Resampling.BILINEAR)
    _composite(canvas, np.asarray(crop, np.uint8), 0, 0)
    canvas = _blur(canvas, rng.uniform(0.01, 0.03) * size)
  return canvas, {"kind": kind, "stamps": used}


def place_objects(catalog, stamps: list, size: int, rng):
  """Scaled, mirrored stamps and their (x, y) positions, boxes within the
  overlap limit: sizes drawn once, positions redrawn (100 tries per round;
  every further round shrinks all sizes by 10%)."""
  longer = [rng.uniform(*OBJECT_SIZE) * size for _ in stamps]
  mirrors = [bool(s.mirror and rng.random() < 0.5) for s in stamps]
  shrink = 1.0
  while True:
    images = [scaled_stamp(s.rgba, max(4, int(round(l * shrink))), m)
              for s, l, m in zip(stamps, longer, mirrors)]
    local = [alpha_box(im[..., 3]) for im in images]
    for _ in range(100):
      xy = [(int(rng.integers(0, size - im.shape[1] + 1)), int(rng.integers(0, size - im.shape[0] + 1)))
            for im in images]
      boxes = [(x + b[0], y + b[1], x + b[2], y + b[3]) for (x, y), b in zip(xy, local)]
      if _overlap_ok(boxes):
        return images, xy, boxes, mirrors
    shrink *= 0.9


# ----------------------------------------------------------------------------
# Sound.

def _fade(clip: np.ndarray, rate: int) -> np.ndarray:
  n = min(int(FADE_SECONDS * rate), clip.size // 2)
  if n > 0:
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)
    clip[:n] *= ramp
    clip[clip.size - n:] *= ramp[::-1]
  return clip


def event(wave: np.ndarray, num: int, rate: int, rng) -> tuple[np.ndarray, tuple, dict]:
  """`num` samples holding one augmented copy of a recording, its active span
  `(a, b)` and what was drawn."""
  speed = rng.uniform(*SPEED)
  positions = np.arange(0, wave.size - 1, speed)
  x = np.interp(positions, np.arange(wave.size), wave).astype(np.float32) if wave.size > 1 else wave
  out = np.zeros(num, np.float32)
  if x.size > num:
    hop = max(1, rate // 100)
    energy = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    starts = np.arange(0, x.size - num + 1, hop)
    window = energy[starts + num] - energy[starts]
    starts = starts[window >= (LOUD_WINDOW ** 2) * window.max()]
    offset = int(starts[int(rng.integers(len(starts)))])
    out[:] = _fade(x[offset:offset + num].copy(), rate)
    span, onset = (0, num), -offset
  else:
    onset = int(rng.integers(0, num - x.size + 1))
    out[onset:onset + x.size] = _fade(x.copy(), rate)
    span = (onset, onset + x.size)
  return out, span, {"speed": round(float(speed), 4), "onset": onset}


def coloured_noise(num: int, colour: str, rng) -> np.ndarray:
  """Unit-RMS Gaussian noise, white or shaped in frequency (pink 1/f, brown
  1/f^2 power)."""
  white = rng.standard_normal(num)
  if colour != "white":
    spectrum = np.fft.rfft(white)
    f = np.arange(spectrum.size, dtype=np.float64)
    f[0] = 1.0
    spectrum /= f ** (0.5 if colour == "pink" else 1.0)
    white = np.fft.irfft(spectrum, num)
  return (white / np.sqrt(np.mean(white ** 2))).astype(np.float32)


def _power(x: np.ndarray, span) -> float:
  seg = x[span[0]:span[1]].astype(np.float64)
  return float(np.mean(seg ** 2)) if seg.size else 0.0


def sound(catalog, group: str, distractor_groups: list, num: int, rng) -> tuple[np.ndarray, dict]:
  """The float32 mix (`num` samples, before quantisation) for a sounding
  `group`, and its description."""
  rate = catalog.sample_rate
  paths = catalog.group_recordings[group]
  recording = paths[int(rng.integers(len(paths)))]
  clip, span, info = event(catalog.recordings[recording], num, rate, rng)
  p = max(_power(clip, span), 1e-12)
  desc = {"recording": recording, **info, "distractor": None}
  colour = ("white", "pink", "brown")[int(rng.integers(3))]
  if distractor_groups and rng.random() < DISTRACTOR_P:
    other = distractor_groups[int(rng.integers(len(distractor_groups)))]
    other_paths = catalog.group_recordings[other]
    other_rec = other_paths[int(rng.integers(len(other_paths)))]
    d, d_span, d_info = event(catalog.recordings[other_rec], num, rate, rng)
    snr_d = rng.uniform(*DISTRACTOR_SNR_DB)
    clip = clip + d * np.float32(np.sqrt(p / 10 ** (snr_d / 10) / max(_power(d, d_span), 1e-12)))
    snr = rng.uniform(*FLOOR_SNR_DB)
    desc["distractor"] = {"group": other, "recording": other_rec, "snr_db": round(float(snr_d), 2),
                          **d_info}
  else:
    snr = rng.uniform(*NOISE_SNR_DB)
  clip = clip + coloured_noise(num, colour, rng) * np.float32(np.sqrt(p / 10 ** (snr / 10)))
  peak = rng.uniform(*PEAK)
  clip = clip * np.float32(peak / max(float(np.max(np.abs(clip))), 1e-9))
  desc.update(noise=colour, snr_db=round(float(snr), 2), peak=round(float(peak), 3))
  return clip.astype(np.float32), desc


# ----------------------------------------------------------------------------
# The example.

def _pick_group(groups, rng):
  return groups[int(rng.integers(len(groups)))]


def make_example(catalog, plan: Plan, image_size: int, audio_params: dict, seed: int,
                 split: str, index: int) -> tuple[dict, dict]:
  """`(example, scene)`: the stored features (numpy / bytes, as the builder
  writes them; validation without boxes) and the full description of the
  composition (every object's stamp, group, size, mirror, position and box;
  background; recording, speed, onset, noise, SNR, distractor). An off-screen
  split (`OFFSCREEN`) gives `offscreen_example`."""
  if split in OFFSCREEN:
    return offscreen_example(catalog, plan, image_size, audio_params, seed, split, index)
  rng = np.random.default_rng([int(seed), SPLITS.index(split), int(index)])
  size = int(image_size)
  sounding_group = _pick_group(plan.sounding(split), rng)
  visible = [g for g in plan.visible(split) if g != sounding_group]
  can_sound = [g for g in visible if g in catalog.group_recordings]
  silent_only = [g for g in visible if g not in catalog.group_recordings]
  silent_groups = []
  for _ in range(2 if rng.random() < TWO_SILENT_P else 1):
    first = can_sound if rng.random() < SILENT_FROM_SOUNDING_P else silent_only
    options = [g for g in (first or can_sound or silent_only) if g not in silent_groups]
    options = options or [g for g in visible if g not in silent_groups]
    silent_groups.append(_pick_group(options, rng))
  groups = [sounding_group] + silent_groups
  stamps = []
  for g in groups:
    members = catalog.groups[g]
    stamps.append(catalog.stamps[members[int(rng.integers(len(members)))]])

  canvas, bg = background(catalog, visible, size, rng)
  images, xy, boxes, mirrors = place_objects(catalog, stamps, size, rng)
  for k in rng.permutation(len(images)):
    _composite(canvas, images[k], *xy[k])
  sigma = rng.uniform(*PIXEL_NOISE)
  canvas = canvas + rng.normal(0.0, sigma, canvas.shape).astype(np.float32)
  image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)

  in_image = set(groups) | {catalog.group_of(p) for p in bg["stamps"]}
  distractors = [g for g in plan.audible(split) if g not in in_image]
  num = int(round(float(audio_params["clip_seconds"]) * int(audio_params["sample_rate"])))
  if int(audio_params["sample_rate"]) != catalog.sample_rate:
    raise ValueError(f"catalog decoded at {catalog.sample_rate} Hz, front end wants "
                     f"{audio_params['sample_rate']}")
  mix, audio_desc = sound(catalog, sounding_group, distractors, num, rng)
  pcm = builder_lib.to_pcm16(mix)
  spec = audio_lib.log_spectrogram(pcm.astype(np.float32) / builder_lib.PCM_SCALE,
                                   catalog.sample_rate, audio_params)

  objects = [{"role": "sounding" if k == 0 else "silent", "group": g, "stamp": s.path,
              "size": [int(im.shape[1]), int(im.shape[0])], "mirror": m, "xy": [int(p[0]), int(p[1])],
              "box": [int(v) for v in b]}
             for k, (g, s, im, m, p, b) in enumerate(zip(groups, stamps, images, mirrors, xy, boxes))]
  scene = {"split": split, "index": int(index), "objects": objects, "background": bg,
           "pixel_noise": round(float(sigma), 3), "audio": audio_desc}
  annotated = split in ANNOTATED
  box_array = lambda bs: np.asarray(bs, np.float32).reshape(-1, 4) if annotated else np.zeros((0, 4), np.float32)  # noqa: E731
  stored_scene = scene if annotated else {
      "split": split, "index": int(index), "audio": audio_desc,
      "objects": [{"role": o["role"], "group": o["group"], "stamp": o["stamp"]} for o in objects],
      "background": bg}
  example = {
      "id": f"{split}_{int(index):06d}",
      "image": builder_lib.encode_image(image, "PNG"),
      "spectrogram": spec.astype(np.float16),
      "waveform": pcm if split in WAVEFORM_SPLITS else np.zeros((0,), np.int16),
      "gt_boxes": box_array([boxes[0]]),
      "silent_boxes": box_array(boxes[1:]),
      "group": sounding_group,
      "silent_groups": "|".join(silent_groups),
      "scene": json.dumps(stored_scene, sort_keys=True),
  }
  return example, {**scene, "image": image, "mix": mix}


def offscreen_example(catalog, plan: Plan, image_size: int, audio_params: dict, seed: int,
                      split: str, index: int) -> tuple[dict, dict]:
  """Example `index` of an off-screen split: the image of example `index` of
  its base split (`OFFSCREEN`: the same pixels), with a new sound of a group
  that is nowhere in that image (no object, no background stamp), drawn from
  the groups the base split sounds (seen for test, unseen for test_unseen;
  if the image holds all of them, any audible group not in it; if every
  audible group is in it, one that is only in its blurred background, which
  `scene["offscreen"]["in_background"]` records: a tiny package only, the
  real one has far more groups than an image shows) and mixed by
  the same recipe (`sound`; its distractor, too, from a group not in the
  image). So no object in the image sounds: `gt_boxes` is empty `[0, 4]` and
  `silent_boxes` holds every object's box (the base's sounding one first);
  `group` is the off-screen sound's group, `silent_groups` the objects'.
  Its own RNG `(seed, split, index)`. DatasetError when every audible group
  is an object of the image."""
  base = OFFSCREEN[split]
  base_example, scene = make_example(catalog, plan, image_size, audio_params, seed, base, index)
  rng = np.random.default_rng([int(seed), SPLITS.index(split), int(index)])
  objects = scene["objects"]
  in_image = ({o["group"] for o in objects}
              | {catalog.group_of(p) for p in scene["background"]["stamps"]})
  objects_only = {o["group"] for o in objects}
  tiers = ([g for g in plan.sounding(base) if g not in in_image],
           [g for g in plan.audible(base) if g not in in_image],
           # last: a group that is only in the blurred background
           [g for g in plan.audible(base) if g not in objects_only])
  tier = next((k for k, t in enumerate(tiers) if t), None)
  if tier is None:
    raise DatasetError(f"stamps: {split} example {index}: every audible group is an object in "
                       f"the image of {base_example['id']}; no off-screen sound is possible")
  group = _pick_group(tiers[tier], rng)
  distractors = [g for g in plan.audible(base) if g not in in_image | {group}]
  num = int(round(float(audio_params["clip_seconds"]) * int(audio_params["sample_rate"])))
  mix, audio_desc = sound(catalog, group, distractors, num, rng)
  pcm = builder_lib.to_pcm16(mix)
  spec = audio_lib.log_spectrogram(pcm.astype(np.float32) / builder_lib.PCM_SCALE,
                                   catalog.sample_rate, audio_params)
  stored = {**{k: v for k, v in scene.items() if k not in ("image", "mix")}, "split": split,
            "audio": audio_desc, "offscreen": {"group": group, "image_of": base_example["id"],
                                  "in_background": tier == 2}}
  example = {
      "id": f"{split}_{int(index):06d}",
      "image": base_example["image"],
      "spectrogram": spec.astype(np.float16),
      "waveform": pcm,
      "gt_boxes": np.zeros((0, 4), np.float32),
      "silent_boxes": np.asarray([o["box"] for o in objects], np.float32).reshape(-1, 4),
      "group": group,
      "silent_groups": "|".join(o["group"] for o in objects),
      "scene": json.dumps(stored, sort_keys=True),
  }
  return example, {**stored, "image": scene["image"], "mix": mix}
