"""The tuxpaint-stamps package as a catalog: stamps, their groups, their recordings.

`load_catalog(manual_dir, sample_rate)` finds the stamps folder (the
`dpkg-deb -x` root or its `usr/share/tuxpaint/stamps` itself), reads every
PNG stamp (RGBA, cropped to its alpha bounding box, at most `max_side`
pixels per side), decodes the stamp's own sound effect (`<stem>.ogg` or any
`media.AUDIO_EXTENSIONS` file beside it; never a `*_desc*` file, which is a
spoken description) and groups the stamps:

* a stamp's group is the first `LOOKALIKE` rule matching its path (stamps that
  look alike, e.g. cow / bull / zebu, or every chess piece), else its
  normalised stem (`lion-2` and a cartoon `lion` are one group);
* groups whose recordings are near-identical (maximum normalised waveform
  cross-correlation >= `DUPLICATE_CORRELATION`; pairs are screened at 4 kHz
  and confirmed at the front end's rate: decoded audio is compared, not
  names) are merged, so a shared recording never names two groups;
* a group is EXCLUDED (never used at all) when any member's stem contains
  one of `EXCLUDED_NAMES`, the outside check's reserved groups.

Recordings that are silent (RMS < 1e-4), spoken letters and digits
(`SPEECH_DIRS`), and sounds without a PNG stamp are not used as sounds;
their stamps (if any) are silent-only. SVG stamps are skipped (no SVG
rasteriser among the dependencies). Everything is sorted, so the catalog is
the same on every machine for the same package.
"""

from __future__ import annotations

import dataclasses
import gzip
import glob
import os
import re

import numpy as np

from soundloc_jax import media
from soundloc_jax.errors import DatasetError

PACKAGE = "tuxpaint-stamps-default"
STAMPS_SUBDIR = os.path.join("usr", "share", "tuxpaint", "stamps")
CHANGELOG = os.path.join("usr", "share", "doc", PACKAGE, "changelog.Debian.gz")
MAKE_COMMANDS = (f"apt-get download {PACKAGE} && dpkg-deb -x {PACKAGE}_*.deb DIR "
                 "(then pass DIR as manual_dir)")

# Reserved for an outside check: every group with a stamp whose stem contains
# one of these is left out of every split, as sounding, silent and clutter.
EXCLUDED_NAMES = ("rubberduck", "saw", "camera_35mm", "cello", "violin", "koala", "grasshopper",
                  "frog", "squirrel", "dolphin", "zebra", "gorilla", "tiger", "penguin", "owl",
                  "tucan")

# Sounds under these folders are spoken letters / digit names (speech about
# the glyph, like the *_desc files), not a sound the object makes.
SPEECH_DIRS = ("symbols/alphabets/", "symbols/math/")

# Look-alike stamps -> one group. (group, regex searched in the stamp's path
# relative to the stamps folder, lower case, extension and normalisation
# suffixes removed); the first match wins, so more specific rules come first
# (a penguin holding a spider is a penguin). Chosen by looking at the package's
# stamps: a silent object must not be confusable with the sounding one, and
# look-alikes of a reserved group share its exclusion (tux / pengwin are
# penguins, chimp looks like gorilla, mantis like grasshopper).
LOOKALIKE = (
    ("penguin", r"penguin|pengwin|(^|/)tux"),
    ("frog", r"frog"),
    ("gorilla_chimp", r"/(gorilla|chimp)$"),
    ("grasshopper", r"grasshopper|mantis"),
    ("tiger", r"tiger"),
    ("cattle", r"/(cow|cow_white|bull|zebu|yak|bison)$"),
    ("goat_sheep", r"/(goat|mountaingoat|ram|sheep|sheep_lamb)$"),
    ("antelope", r"/(gnu-.*|indian_blackbuck)$"),
    ("deer", r"/(deer|doe|caribou|wapiti)$"),
    ("camel", r"/(camel|dromedary)$"),
    ("pig", r"/(pig|pig_golden|wildboar)$"),
    ("hippo_rhino", r"/(hippopotamus|rhino_black)$"),
    ("equine", r"/(horse|donkey|donkey_eating)$"),
    ("duck", r"/(duck|drake)$"),
    ("chicken", r"/(hen|rooster|chicken_profile)$"),
    ("black_bird", r"/(crow|blackbird)$"),
    ("gull", r"/(seagull|silver-gull)$"),
    ("heron", r"heron"),
    ("bee", r"/(bee|hornet|hoverfly)$"),
    ("moth_butterfly", r"/(xanthia|butterfly)$"),
    ("bear", r"/(bear|european-bear)$"),
    ("canine", r"/(dog|dingo|fox)$"),
    ("mouse_rat", r"/(mouse|rat)$"),
    ("rabbit", r"rabbit|bunny"),
    ("scissors", r"scissors"),
    ("hammer", r"/(hammer|mallet_metal)$"),
    ("kettle_teapot", r"/(kettle|teapot)$"),
    ("dreydl", r"dreydl"),
    ("faces", r"^symbols/faces/"),
    ("crossing_sign", r"/(xing_ped|xing_school|school_sign)$"),
    ("drums", r"/(drumkit|drum_tomtom_floor|cymbal_crash)$"),
    ("apple", r"/apple"),
    ("fireworks", r"fireworks"),
    ("fire_engine", r"/(firetruck|fire_engine)$"),
    ("spider", r"spider"),
    ("guitar", r"guitar"),
    ("letters", r"^symbols/alphabets/"),
    ("digits", r"^symbols/math/[0-9]"),
    ("math_operators", r"^symbols/math/operators/"),
    ("chess", r"^symbols/chess/"),
    ("money", r"^symbols/money/"),
    ("music_notation", r"^symbols/music/"),
    ("planets", r"^space/planets/"),
    ("moon", r"^space/moon/"),
    ("flowers", r"^plants/flowers/"),
    ("mushroom", r"/(cep|mushroom)"),
    ("grave", r"/grave-"),
    ("buildings", r"^town/houses/"),
    ("clothes", r"^clothes/t_"),
    ("plain_flag", r"^town/flags/(?!checkered)"),
    ("stoplight", r"stoplight"),
    ("candy_cane", r"candy_cane"),
    ("police_car", r"sedan"),
    ("wrench", r"wrench"),
)

# Near-duplicate recordings. Measured on the package at 16 kHz: the shared
# recordings (badger = beaver, ram = mountaingoat, goat ~ both, camel ~
# dromedary) correlate 1.0 / 1.0 / 0.88 / 0.84, every other screened pair
# <= 0.19. The 4 kHz screen alone is not enough: sounds above 2 kHz vanish
# there, and what is left of different high tones correlates ~0.97.
SCREEN_RATE = 4000                 # Hz, the cheap all-pairs screen
DUPLICATE_CORRELATION = 0.6        # at 4 kHz (screen) and at the front end's rate (decision)
SILENT_RMS = 1e-4                  # a recording below this is silence (4 in the package)
TRIM_DB = 40.0                     # leading / trailing frames this far below the loudest are cut


@dataclasses.dataclass
class Stamp:
  """One PNG stamp: `path` relative to the stamps folder (with extension),
  `rgba` uint8 `[h, w, 4]` cropped to alpha > 0 (and shrunk to `max_side`),
  `mirror` whether Tux Paint allows a left-right mirror (no `nomirror` in its
  .dat), `sound` the relative path of its usable recording ('' if none)."""
  path: str
  rgba: np.ndarray
  mirror: bool
  sound: str = ""
  group: str = ""

  @property
  def stem(self) -> str:
    return os.path.splitext(os.path.basename(self.path))[0]


@dataclasses.dataclass
class Catalog:
  """The package: `stamps` (usable PNG stamps, excluded ones removed),
  `groups` {name: [stamp index]}, `recordings` {relative path: float32
  waveform at `sample_rate`, trimmed, peak 1}, `group_recordings`
  {group: [paths]} (groups that can sound), `excluded` {group: [stamp paths]},
  and what was left out and why (`notes`)."""
  root: str
  version: str
  sample_rate: int
  stamps: list
  groups: dict
  recordings: dict
  group_recordings: dict
  excluded: dict
  notes: dict

  def group_of(self, path: str) -> str:
    """The group of a stamp path."""
    if not hasattr(self, "_group_of"):
      self._group_of = {s.path: s.group for s in self.stamps}
    return self._group_of[path]

  def sounding_groups(self) -> list[str]:
    return sorted(self.group_recordings)

  def silent_only_groups(self) -> list[str]:
    return sorted(g for g in self.groups if g not in self.group_recordings)


# ----------------------------------------------------------------------------
# Locating the package.

def find_stamps_root(manual_dir) -> str:
  """The stamps folder inside `manual_dir` (the `dpkg-deb -x` root) or
  `manual_dir` itself when it is that folder; a `DatasetError` naming it
  otherwise."""
  manual_dir = os.fspath(manual_dir)
  for candidate in (os.path.join(manual_dir, STAMPS_SUBDIR), manual_dir):
    if os.path.isdir(candidate) and glob.glob(os.path.join(candidate, "**", "*.png"),
                                               recursive=True):
      return candidate
  raise DatasetError(f"stamps: manual_dir {manual_dir!r} holds no extracted {PACKAGE} package "
                     f"(no PNG stamps in it or in its {STAMPS_SUBDIR}); make it with: "
                     f"{MAKE_COMMANDS}")


def package_version(manual_dir, stamps_root: str) -> str:
  """The package version: the first line of the Debian changelog beside the
  stamps (`tuxpaint-stamps (2022.06.04-1) ...`), else the name of a
  `tuxpaint-stamps-default_<version>_all.deb` in or next to `manual_dir`,
  else 'unknown'."""
  share = os.path.dirname(os.path.dirname(os.path.normpath(stamps_root)))  # .../usr/share
  for path in (os.path.join(share, "doc", PACKAGE, "changelog.Debian.gz"),
               os.path.join(os.fspath(manual_dir), CHANGELOG)):
    if os.path.exists(path):
      with gzip.open(path, "rt", errors="replace") as f:
        match = re.match(r"\S+ \(([^)]+)\)", f.readline())
      if match:
        return match.group(1)
  for folder in (os.fspath(manual_dir), os.path.dirname(os.path.abspath(manual_dir))):
    debs = sorted(glob.glob(os.path.join(folder, f"{PACKAGE}_*.deb")))
    if debs:
      return os.path.basename(debs[-1])[len(PACKAGE) + 1:].split("_")[0]
  return "unknown"


# ----------------------------------------------------------------------------
# Grouping.

def normalised_stem(stem: str) -> str:
  """`stem` lower-cased without a `_mirror` suffix or trailing number
  (`lion-2` -> `lion`, `pig_golden2` -> `pig_golden`); itself if nothing is left."""
  s = stem.lower()
  s = re.sub(r"_mirror$", "", s)
  s = re.sub(r"[-_]?\d+$", "", s)
  return s or stem.lower()


def lookalike_key(rel_path: str) -> str:
  """The look-alike group of a stamp path (relative, with extension)."""
  rel = rel_path.replace(os.sep, "/").lower()
  folder, name = os.path.split(os.path.splitext(rel)[0])
  key_path = f"{folder}/{normalised_stem(name)}" if folder else normalised_stem(name)
  for group, pattern in LOOKALIKE:
    if re.search(pattern, key_path):
      return group
  return normalised_stem(name)


def is_excluded_name(stem: str) -> bool:
  s = stem.lower()
  return any(name in s for name in EXCLUDED_NAMES)


class _UnionFind:
  def __init__(self, items):
    self.parent = {i: i for i in items}

  def find(self, x):
    while self.parent[x] != x:
      self.parent[x] = self.parent[self.parent[x]]
      x = self.parent[x]
    return x

  def union(self, a, b):
    ra, rb = self.find(a), self.find(b)
    if ra != rb:
      self.parent[max(ra, rb)] = min(ra, rb)


def max_normalised_correlation(a: np.ndarray, b: np.ndarray) -> float:
  """max over lags of |<a_lag, b>| / (|a_lag| |b|), the shorter signal slid
  along the longer one (lags where the window holds at least half the
  largest window energy): 1.0 for the same recording at any gain or offset."""
  from scipy import signal
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.size < b.size:
    a, b = b, a
  m = b.size
  padded = np.concatenate([np.zeros(m - 1), a, np.zeros(m - 1)])
  corr = signal.fftconvolve(padded, b[::-1], mode="valid")
  energy = np.concatenate([[0.0], np.cumsum(padded ** 2)])
  window = np.sqrt(np.maximum(energy[m:] - energy[:-m], 0.0)) * np.linalg.norm(b)
  ok = window > 0.5 * window.max()
  return float(np.max(np.abs(corr[ok]) / window[ok])) if ok.any() else 0.0


def duplicate_pairs(screen: dict[str, np.ndarray], full: dict[str, np.ndarray]
                    ) -> list[tuple[str, str, float]]:
  """Pairs of recordings whose `max_normalised_correlation` reaches
  DUPLICATE_CORRELATION both in `screen` (`{path: waveform at SCREEN_RATE}`)
  and in `full` (the same recordings at the front end's rate), with the
  full-rate value."""
  keys = sorted(screen)
  out = []
  for i, a in enumerate(keys):
    for b in keys[i + 1:]:
      if max_normalised_correlation(screen[a], screen[b]) >= DUPLICATE_CORRELATION:
        c = max_normalised_correlation(full[a], full[b])
        if c >= DUPLICATE_CORRELATION:
          out.append((a, b, round(c, 3)))
  return out


# ----------------------------------------------------------------------------
# Media.

def read_stamp(path: str, max_side: int) -> np.ndarray:
  """RGBA uint8 of a stamp file, cropped to its alpha > 0 box, shrunk (Lanczos,
  premultiplied alpha as PIL resizes RGBA) so that its longer side is at most
  `max_side`."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as im:
      rgba = im.convert("RGBA")
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise media.MediaError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
  box = rgba.getchannel("A").getbbox()
  if box is None:
    raise media.MediaError(f"{path}: the stamp is fully transparent")
  rgba = rgba.crop(box)
  w, h = rgba.size
  if max(w, h) > max_side:
    scale = max_side / max(w, h)
    rgba = rgba.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                       Image.Resampling.LANCZOS)
  return np.asarray(rgba, np.uint8)


def trim(wave: np.ndarray, rate: int) -> np.ndarray:
  """`wave` without leading / trailing 10 ms frames TRIM_DB below its loudest."""
  hop = max(1, rate // 100)
  n = -(-wave.size // hop)
  frames = np.pad(wave, (0, n * hop - wave.size)).reshape(n, hop)
  rms = np.sqrt(np.mean(frames ** 2, axis=1))
  loud = np.flatnonzero(rms >= rms.max() * 10 ** (-TRIM_DB / 20))
  return wave[loud[0] * hop:(loud[-1] + 1) * hop]


def _sound_of(folder: str, stem: str, names: set) -> str:
  for ext in media.AUDIO_EXTENSIONS:
    if stem + ext in names and "_desc" not in stem:
      return stem + ext
  return ""


def _dat_words(path: str) -> set:
  if not os.path.exists(path):
    return set()
  with open(path, errors="replace") as f:
    return {w.strip().lower() for w in f.read().split()}


# ----------------------------------------------------------------------------
# The catalog.

def load_catalog(manual_dir, sample_rate: int, max_side: int, log=None) -> Catalog:
  """Reads the package in `manual_dir` (see the module docstring)."""
  log = log or (lambda message: None)
  root = find_stamps_root(manual_dir)
  version = package_version(manual_dir, root)
  notes = {"svg_skipped": 0, "silent_recordings": [], "speech_recordings": 0,
           "sounds_without_png": [], "duplicate_recordings": []}
  stamps = []
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    names = set(files)
    rel_folder = os.path.relpath(folder, root)
    rel_folder = "" if rel_folder == "." else rel_folder.replace(os.sep, "/")
    used_sounds = set()
    for name in sorted(files):
      stem, ext = os.path.splitext(name)
      if ext.lower() == ".svg":
        notes["svg_skipped"] += 1
      if ext.lower() != ".png":
        continue
      rel = f"{rel_folder}/{name}" if rel_folder else name
      sound = _sound_of(folder, stem, names)
      used_sounds.add(sound)
      if sound and any(rel.startswith(d) for d in SPEECH_DIRS):
        notes["speech_recordings"] += 1
        sound = ""
      words = _dat_words(os.path.join(folder, stem + ".dat"))
      stamps.append(Stamp(path=rel, rgba=read_stamp(os.path.join(folder, name), max_side),
                          mirror="nomirror" not in words,
                          sound=(f"{rel_folder}/{sound}" if rel_folder else sound) if sound else ""))
    for name in sorted(files):
      stem, ext = os.path.splitext(name)
      if (ext.lower() in media.AUDIO_EXTENSIONS and "_desc" not in stem and name not in used_sounds
          and not any(f"{rel_folder}/".startswith(d) for d in SPEECH_DIRS)):
        notes["sounds_without_png"].append(f"{rel_folder}/{name}" if rel_folder else name)
  log(f"stamps: {len(stamps)} PNG stamps in {root} (package version {version})")

  # Recordings: decoded at the front end's rate, trimmed, peak-normalised.
  recordings, screen, full = {}, {}, {}
  for stamp in stamps:
    if not stamp.sound:
      continue
    path = os.path.join(root, stamp.sound)
    wave, _ = media.read_audio(path, sample_rate=sample_rate)
    if np.sqrt(np.mean(wave.astype(np.float64) ** 2)) < SILENT_RMS:
      notes["silent_recordings"].append(stamp.sound)
      stamp.sound = ""
      continue
    full[stamp.sound] = wave
    screen[stamp.sound] = media.read_audio(path, sample_rate=SCREEN_RATE)[0]
    wave = trim(wave, sample_rate)
    recordings[stamp.sound] = (wave / np.max(np.abs(wave))).astype(np.float32)

  # Groups: look-alike rules, then shared (near-identical) recordings merge groups.
  keys = [lookalike_key(s.path) for s in stamps]
  union = _UnionFind(sorted(set(keys)))
  by_sound = {s.sound: k for s, k in zip(stamps, keys) if s.sound}
  for a, b, c in duplicate_pairs(screen, full):
    notes["duplicate_recordings"].append([a, b, c])
    union.union(by_sound[a], by_sound[b])
  members: dict[str, list[str]] = {}
  for key in sorted(set(keys)):
    members.setdefault(union.find(key), []).append(key)
  names = {root_key: "+".join(sorted(ks)) for root_key, ks in members.items()}
  for stamp, key in zip(stamps, keys):
    stamp.group = names[union.find(key)]

  excluded_groups = sorted({s.group for s in stamps if is_excluded_name(s.stem)})
  excluded = {g: sorted(s.path for s in stamps if s.group == g) for g in excluded_groups}
  kept = [s for s in stamps if s.group not in excluded]
  groups: dict[str, list[int]] = {}
  for i, stamp in enumerate(kept):
    groups.setdefault(stamp.group, []).append(i)
  group_recordings = {}
  for g, idx in groups.items():
    sounds = sorted({kept[i].sound for i in idx if kept[i].sound})
    if sounds:
      group_recordings[g] = sounds
  recordings = {p: w for p, w in recordings.items() if any(p in v for v in group_recordings.values())}
  log(f"stamps: {len(groups)} groups ({len(group_recordings)} with recordings), "
      f"{len(excluded)} excluded groups ({sum(map(len, excluded.values()))} stamps)")
  return Catalog(root=root, version=version, sample_rate=int(sample_rate), stamps=kept,
                 groups=groups, recordings=recordings, group_recordings=group_recordings,
                 excluded=excluded, notes=notes)
