"""`stamps`: a real-media localization benchmark composed offline from the photo
stamps and recorded sound effects of the Debian package `tuxpaint-stamps-default`.

manual_dir is the extracted package (`apt-get download tuxpaint-stamps-default
&& dpkg-deb -x tuxpaint-stamps-default_*.deb DIR`: DIR, or its
`usr/share/tuxpaint/stamps`); nothing is downloaded. `catalog.py` turns the
package into stamps, groups and recordings; `generate.py` composes one example
(see their docstrings for the image, the sound and the boxes); README.md
gives the design, the splits and the oracle / chance numbers.

Splits (sizes of the `default` config): `train` 6000, `validation` 500
(stored WITHOUT boxes: the unannotated model-selection split), `test` 500
(seen groups, new compositions and clips), `test_unseen` 500 (sounding groups
that never appear in train / validation / test, neither sounding nor silent
nor in a background), `test_offscreen` / `test_unseen_offscreen` 500 each
(image `i` of test / test_unseen with a clip of a group nowhere in it, so
nothing in the image sounds: no `gt_boxes`, every object in `silent_boxes`;
`generate.offscreen_example`; listed in `info.metadata["offscreen_splits"]`
for the `extended` evaluator). Example `i` of a split is drawn from its own RNG
`(seed, split, i)`, so it does not depend on the other sizes, on the worker
count or on generation order.

Features: `image` PNG S x S; `spectrogram` float16 (the config's front end on
the 16-bit mix); `waveform` int16, the mix itself (test splits; empty
otherwise); `gt_boxes` float32 `[1, 4]` the sounding object's box and
`silent_boxes` `[k, 4]` the silent objects' (k = 1 or 2), pixels of the S x S
image, half-open (empty `[0, 4]` in validation); `group` the sounding group,
`silent_groups` the silent ones joined by `|`; `scene` JSON of the whole
composition (validation: without positions or boxes); `id` `<split>_<i:06d>`.
`info.metadata`: `audio` (training checks it against config.audio),
`gt_format` `"pixels:S"` (the evaluator's rule for pixel boxes of an S x S
image), `image_size`, `seed`, `package_version`, `groups` per split,
`excluded` groups and their stamps, and what the package scan left out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from soundloc_jax import audio as audio_lib
from soundloc_jax import builder_lib
from soundloc_jax.errors import DatasetError

from . import catalog as catalog_lib
from . import generate

SEED = 20240917
# 1 s of 16 kHz audio as a 64-band log-mel with a 10 ms hop: 64 x 101. One
# second holds most of a trimmed recording (median ~1.5 s; 30 are shorter),
# and the small input keeps training on 2 CPU cores fast.
DEFAULT_AUDIO = audio_lib.STAMPS
FULL_SIZES = {"train": 6000, "validation": 500, "test": 500, "test_unseen": 500,
              "test_offscreen": 500, "test_unseen_offscreen": 500}
UNSEEN_FRACTION = 0.2


@dataclasses.dataclass(eq=False)
class StampsConfig(tfds.core.BuilderConfig):
  """`image_size` S (square images; boxes in its pixels), `audio` the front end
  (`audio.log_spectrogram` params; its `clip_seconds` is the clip length),
  `sizes` per split, `seed` of every random draw, `unseen_fraction` of the
  groups that can sound held out for test_unseen (drawn from `seed`), or
  `unseen_groups` naming them instead, `num_workers` preparation processes
  (0 = $SOUNDLOC_BUILD_WORKERS or all cores)."""
  image_size: int = 96
  audio: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_AUDIO))
  sizes: dict = dataclasses.field(default_factory=lambda: dict(FULL_SIZES))
  seed: int = SEED
  unseen_fraction: float = UNSEEN_FRACTION
  unseen_groups: tuple = ()
  num_workers: int = 0


# The `_kin` variants' test_unseen groups: 11 animals (as many as the default
# draw holds out) each of which keeps a group of its own kind, by look and by
# call, among the seen ones: heron, duck, gull and chicken (gander, black_bird,
# lark, turkey, ... stay seen), lion and canine (bear, blackcat, ferret), pig
# and goat_sheep (cattle, camel, deer, equine), orca (whale, sea_lion), bee
# (moth_butterfly), mouse_rat (rabbit, ferret). The default draw holds out 11
# groups of which only heron, lion and pig have such kin, so its test_unseen
# cannot tell whether a model would transfer to a new object of a known kind.
KIN_UNSEEN = ("bee", "canine", "chicken", "duck", "goat_sheep", "gull", "heron", "lion",
              "mouse_rat", "orca", "pig")


CONFIG_ENV = "SOUNDLOC_STAMPS_CONFIG"
LVS_FRONT_END = dict(kind="lvs_psd", sample_rate=16000, nperseg=512, noverlap=353)


def config_from_name(name: str) -> StampsConfig:
  """A config from its name: `default` (= `px96`), or `px<S>` with optional
  `_clip<seconds>s` (clip length, default 1) and `_lvs` (the LVS PSD front end
  on that clip instead of the log-mel), e.g. `px64`, `px64_clip2s_lvs`. The
  name holds every non-default field, so each variant has its own directory
  (`<data_dir>/stamps/<name>/1.0.0`)."""
  import re
  match = re.fullmatch(r"px(\d+)(?:_clip(\d+(?:\.\d+)?)s)?(_lvs)?(_kin)?", name)
  if name != "default" and not match:
    raise ValueError(f"stamps config {name!r}: expected 'default' or "
                     "px<S>[_clip<seconds>s][_lvs][_kin], e.g. px64, px128_clip2s, px96_kin")
  size, clip, lvs, kin = (96, None, None, None) if name == "default" else match.groups()
  front_end = dict(LVS_FRONT_END if lvs else DEFAULT_AUDIO)
  front_end["clip_seconds"] = float(clip) if clip else 1.0
  clip_name = f"_clip{float(clip):g}s" if clip and float(clip) != 1.0 else ""
  canonical = f"px{int(size)}{clip_name}" + ("_lvs" if lvs else "") + ("_kin" if kin else "")
  if canonical == "px96":
    canonical = "default"
  desc = (f"{int(size)} x {int(size)} images, {front_end['clip_seconds']:g} s "
          f"{'LVS PSD' if lvs else 'log-mel'} {audio_lib.spectrogram_shape(front_end)}"
          + ("; test_unseen holds out animals with kin among the seen groups." if kin else "."))
  return StampsConfig(name=canonical, description=desc, image_size=int(size), audio=front_end,
                      unseen_groups=KIN_UNSEEN if kin else ())


def default_config() -> StampsConfig:
  """`default`, or the config named by $SOUNDLOC_STAMPS_CONFIG (read at import)."""
  return config_from_name(os.environ.get(CONFIG_ENV, "").strip() or "default")


INSTRUCTIONS = ("manual_dir is the extracted Debian package: " + catalog_lib.MAKE_COMMANDS)


def gt_format(image_size: int) -> str:
  return f"pixels:{int(image_size)}"


# ----------------------------------------------------------------------------
# Preparation workers: the catalog reaches them once (inherited under fork).

_STATE: dict = {}


def _blas_one_thread():
  """One BLAS thread per process: the mel filterbank product of one 1 s clip
  is ~10x slower multi-threaded (measured, 2 cores)."""
  try:
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    return threadpool_limits(limits=1)
  except ImportError:
    return contextlib.nullcontext()


def _init_worker(state: dict) -> None:
  _STATE.clear()
  _STATE.update(state)
  _STATE["limits"] = _blas_one_thread()


def _make(job):
  split, index = job
  s = _STATE
  example, _ = generate.make_example(s["catalog"], s["plan"], s["image_size"], s["audio"], s["seed"],
                                     split, index)
  return example["id"], example


def _examples(state: dict, split: str, count: int, workers: int):
  jobs = [(split, i) for i in range(count)]
  if workers <= 1 or count < 2:
    previous = dict(_STATE)
    _init_worker(state)
    try:
      with _STATE["limits"]:
        for job in jobs:
          yield _make(job)
    finally:
      _STATE.clear()
      _STATE.update(previous)
    return
  pool = builder_lib._context().Pool(min(workers, count), initializer=_init_worker,  # pylint: disable=protected-access
                                     initargs=(state,))
  try:
    yield from pool.imap_unordered(_make, jobs, chunksize=max(1, min(32, count // (4 * workers))))
  finally:
    pool.terminate()
    pool.join()


# ----------------------------------------------------------------------------
# TFDS builder.

class Builder(tfds.core.GeneratorBasedBuilder):
  """The stamps benchmark (see the module docstring and README.md)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  # One config, so that the command line builds one dataset: `default`, or the
  # variant named by $SOUNDLOC_STAMPS_CONFIG when this module is first imported.
  BUILDER_CONFIGS = [default_config()]

  def download_and_prepare(self, *args, **kwargs):
    """TFDS records the config it just built as the one a bare `stamps` reads
    (`<data_dir>/stamps/.config/metadata.json`), so a variant build would
    switch every later `stamps` run to the variant; after a variant build,
    `default` is recorded again where it is built."""
    super().download_and_prepare(*args, **kwargs)
    common = self.data_path.parent.parent  # <data_dir>/stamps, an epath like data_dir
    if self.builder_config.name != "default" and (common / "default").is_dir():
      (common / ".config" / "metadata.json").write_text(
          json.dumps({"default_config_name": "default"}))

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    extra = {"silent_boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
             "group": tfds.features.Text(), "silent_groups": tfds.features.Text(),
             "scene": tfds.features.Text()}
    return self.dataset_info_from_configs(
        features=builder_lib.features(cfg.audio, extra),
        homepage="https://packages.debian.org/tuxpaint-stamps-default",
        metadata=tfds.core.MetadataDict(
            audio=audio_lib.params_dict(cfg.audio), image_size=int(cfg.image_size),
            gt_format=gt_format(cfg.image_size), seed=int(cfg.seed),
            offscreen_splits=[k for k in generate.OFFSCREEN if int(cfg.sizes.get(k, 0)) > 0],
            sizes={k: int(v) for k, v in cfg.sizes.items()},
            unseen_fraction=float(cfg.unseen_fraction),
            unseen_groups=list(cfg.unseen_groups), package=catalog_lib.PACKAGE,
            licence="GPL-2+ (the package's media); generated data is not redistributed",
            generation=_generation_constants()))

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    unknown = set(cfg.sizes) - set(generate.SPLITS)
    if unknown:
      raise DatasetError(f"stamps: unknown split(s) {sorted(unknown)} in sizes; "
                         f"expected {generate.SPLITS}")
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError as e:
      where = getattr(dl_manager, "_manual_dir", None)
      raise DatasetError(f"stamps: manual_dir {os.fspath(where) if where else '(none given)'!r} "
                         f"does not exist or is empty; make it with: "
                         f"{catalog_lib.MAKE_COMMANDS}") from e
    catalog = catalog_lib.load_catalog(manual_dir, int(cfg.audio["sample_rate"]),
                                       max_side=2 * int(cfg.image_size), log=builder_lib.log)
    plan = generate.make_plan(catalog, int(cfg.seed), float(cfg.unseen_fraction),
                              tuple(cfg.unseen_groups))
    meta = self.info.metadata
    meta["package_version"] = catalog.version
    meta["groups"] = {"seen": list(plan.seen), "unseen": list(plan.unseen),
                      "silent_only": list(plan.silent_only)}
    meta["group_recordings"] = {g: list(v) for g, v in catalog.group_recordings.items()}
    meta["excluded"] = {"names": list(catalog_lib.EXCLUDED_NAMES), "groups": catalog.excluded}
    meta["package_scan"] = {**catalog.notes, "stamps_used": len(catalog.stamps),
                            "groups": len(catalog.groups)}
    state = {"catalog": catalog, "plan": plan, "image_size": int(cfg.image_size),
             "audio": dict(cfg.audio), "seed": int(cfg.seed)}
    workers = builder_lib.resolve_options(
        builder_lib.RealDataConfig(name="x", num_workers=int(cfg.num_workers))).num_workers
    builder_lib.log(f"stamps: {len(plan.seen)} seen, {len(plan.unseen)} unseen sounding groups, "
                    f"{len(plan.silent_only)} silent-only groups; {workers} worker(s)")
    return {split: self._generate_examples(state, split, int(n), workers)
            for split, n in cfg.sizes.items() if int(n) > 0}

  def _generate_examples(self, state, split, count, workers):
    return _examples(state, split, count, workers)


def _generation_constants() -> dict:
  g = generate
  return dict(object_size=list(g.OBJECT_SIZE), max_overlap=g.MAX_OVERLAP, two_silent_p=g.TWO_SILENT_P,
              silent_from_sounding_p=g.SILENT_FROM_SOUNDING_P, box_alpha=g.BOX_ALPHA,
              backgrounds=list(g.BACKGROUNDS), pixel_noise=list(g.PIXEL_NOISE), speed=list(g.SPEED),
              noise_snr_db=list(g.NOISE_SNR_DB), distractor_p=g.DISTRACTOR_P,
              distractor_snr_db=list(g.DISTRACTOR_SNR_DB), floor_snr_db=list(g.FLOOR_SNR_DB),
              peak=list(g.PEAK), duplicate_correlation=catalog_lib.DUPLICATE_CORRELATION,
              lookalike_rules=[list(r) for r in catalog_lib.LOOKALIKE])
