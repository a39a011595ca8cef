"""Dataset presets: the papers' real-data settings, applied on top of a method config.

`apply_preset(config, preset)` sets the dataset (a builder of `data_builders/`
and its config), splits, the stored-view sizes and augmentation, the audio
front end the builder records (training checks it), the model width and the
LVS evaluation protocol. "" leaves the config unchanged (the av_digits demo).
Method files expose these as `--config=configs/<method>.py:PRESET`:
`iterative.py` (ICL) takes `flickr_10k`, `flickr_20k`, `music_synthetic`;
`hard_positive.py` (HardPos), `lvs.py` (its baselines) and `ezvsl.py` take
`vggsound_144k`, `flickr_144k` and their `_extended` variants (SLAVC's
extended test sets: test + test_offscreen, AP / max-F1); every method file
takes `stamps`, the
real-media benchmark built offline (data_builders/stamps). A preset
whose dataset is not built fails at start with the `DatasetError` of
`input_pipeline.open_source`, which names the build command.

Values and where they come from:
  image_size 224, eval.size 224, median protocol, cIoU@0.5
                     the LVS test protocol HardPos reports (docs/evaluation.md);
                     ICL resizes Flickr images to 256, evaluated here at 224
                     as the other work does.
  audio              the builders' default, LVS's PSD front end on 3 s at
                     16 kHz (257x299, HardPos's "257x300 ... 3 s around the
                     frame"). ICL's log-mel (5 s at 22.05 kHz; mel parameters
                     not given) is not reproduced: the Flickr presets use the
                     HardPos front end.
  model.width 64     ResNet-18 as in both papers.
  batch_size         ICL: 96 ("the same batch size of 96 ... for all the
                     experiments"); HardPos: 128 (not stated in the paper;
                     the value of the LVS code it builds on).
  num_epochs         not stated by either paper: 30 for ICL presets, 20 for
                     HardPos presets (our choice; change with --config.num_epochs).
  validation         an unannotated held-out part of the training list
                     (`builder_lib.validation_ids`), never the test set.

`stamps` (data_builders/stamps/README.md) is the recipe measured to learn
from scratch on 2 CPU cores in ~13 min a run (docs/results.md): the 96 px
images as stored (6x6 maps; no crop or flip, the boxes are exact), width 16,
Adam at 1e-3 (3e-3, the demo's rate, left the Eq. 3 loss at ln 64 for 4
epochs), batch 64, 12 epochs, the builder's 1 s log-mel front end (64 x
101), ICL's fixed-threshold protocol at 224 (the median rule caps cIoU at
twice the box fraction, ~0.33 here), test and test_unseen.

`stamps128` is the same recipe on the builder's `px128` config (build it
with SOUNDLOC_STAMPS_CONFIG=px128): 128 px images, so 8x8 maps instead of
6x6, at ~1.8x the step cost (~33 min a run, two at a time on 2 cores).
Measured there, ICL from scratch points above the centre guess, which it
does not at 96 px (docs/results.md).

`stamps_imagenet` / `stamps128_imagenet` are the papers' own setting on the
same data: the visual stream is ImageNet EfficientNet-Lite0
(`model.visual_backbone = "efficientnet_lite0"`, stride 16: 6x6 / 8x8 maps)
started from `model.init_visual = "weights/efficientnet_lite0"` (relative to
the working directory; write it with `python -m
soundloc_jax.tools.import_efficientnet_lite0 --out=weights/efficientnet_lite0`,
or point the field elsewhere). The trunk is frozen (`model.visual_trunk =
"frozen"`: ImageNet's features as they are, no backward pass through them);
the 1x1 projection after it and the audio ResNet-18 train from scratch.
Measured on stamps128 with LVS (docs/results.md, "The ImageNet setting"):
fine-tuning the trunk (`--config.model.visual_trunk=finetune`, at 0.1x the
rate, `optimizer.pretrained_lr_scale`, BatchNorm trained, `model.visual_bn`)
costs 4x the step and trailed the frozen trunk in validation retrieval at
equal epochs (median rank 33.5 against 19 after 2 epochs).
"""

from __future__ import annotations

import ml_collections

from soundloc_jax import audio as audio_lib
from soundloc_jax.configs import default
from soundloc_jax.errors import ConfigError

_COMMON = dict(image_size=224, augment=True, width=64, eval_size=224, protocol="median",
               success_threshold=0.5, audio=default.LVS_AUDIO)

_STAMPS = dict(dataset="stamps", test_splits=("test", "test_unseen"), image_size=96,
               augment=False, width=16, eval_size=224, protocol="fixed",
               success_threshold=0.5, audio=audio_lib.STAMPS, batch_size=64,
               num_epochs=12, learning_rate=1e-3,
               test_evals=("localization", "silent_object", "retrieval"))

# The ImageNet visual stream of the `_imagenet` stamps presets: where the
# importer writes by default in the README's commands, and the recipe measured
# in docs/results.md ("The ImageNet setting").
IMAGENET_WEIGHTS = "weights/efficientnet_lite0"
_IMAGENET = dict(visual_backbone="efficientnet_lite0", init_visual=IMAGENET_WEIGHTS,
                 visual_trunk="frozen", pretrained_lr_scale=0.1, visual_bn="train")

PRESETS = {
    # ICL (Flickr-SoundNet subsets of Qian et al.; test: the 250 annotated ids).
    "flickr_10k": dict(_COMMON, dataset="flickr_soundnet/10k", test_splits=("test",),
                       batch_size=96, num_epochs=30),
    "flickr_20k": dict(_COMMON, dataset="flickr_soundnet/20k", test_splits=("test",),
                       batch_size=96, num_epochs=30),
    # ICL: 25k synthetic 2x2 instrument grids, 1 s audio at 16 kHz, 455 test pairs.
    "music_synthetic": dict(_COMMON, dataset="music_synthetic", test_splits=("test",),
                            batch_size=96, num_epochs=30,
                            audio=dict(default.LVS_AUDIO, clip_seconds=1.0)),
    # HardPos Table 1: VGGSound 144k, tested on VGG-SS (add a Flickr-SoundNet
    # test with --config.dataset.test_splits='("vggss:test", "flickr_soundnet/144k:test")').
    "vggsound_144k": dict(_COMMON, dataset="vggsound/144k", test_splits=("vggss:test",),
                          batch_size=128, num_epochs=20),
    # HardPos Table 2: Flickr-SoundNet 144k, tested on its 250 annotated ids.
    "flickr_144k": dict(_COMMON, dataset="flickr_soundnet/144k", test_splits=("test",),
                        batch_size=128, num_epochs=20),
    # The real-media benchmark made offline from tuxpaint-stamps-default.
    "stamps": _STAMPS,
    # The same at 128 px (the builder's `px128` config): 8x8 maps.
    "stamps128": dict(_STAMPS, dataset="stamps/px128", image_size=128),
    # The papers' setting: the visual stream from ImageNet (EfficientNet-Lite0),
    # fine-tuned; the audio ResNet-18 from scratch (module docstring).
    "stamps_imagenet": dict(_STAMPS, **_IMAGENET),
    "stamps128_imagenet": dict(_STAMPS, dataset="stamps/px128", image_size=128, **_IMAGENET),
}
# The presets of the stamps benchmark, which every method file takes.
STAMPS_PRESETS = ("stamps", "stamps128", "stamps_imagenet", "stamps128_imagenet")
# The extended test sets of SLAVC (Mo and Morgado, NeurIPS 2022): the test set
# plus the builders' `test_offscreen` pairs (the sound's source is not in the
# frame; from SLAVC's *_test_plus_silent.csv, data_builders/flickr_soundnet,
# vggss), scored by the `extended` evaluator (AP, max-F1; docs/evaluation.md)
# as well. SLAVC trains on VGGSound 144k and also tests on the extended
# Flickr-SoundNet set: add it with --config.dataset.test_splits=
# '("vggss:test+test_offscreen", "flickr_soundnet/144k:test+test_offscreen")'.
_EXTENDED_EVALS = ("localization", "extended")
PRESETS["vggsound_144k_extended"] = dict(
    PRESETS["vggsound_144k"], test_splits=("vggss:test+test_offscreen",),
    test_evals=_EXTENDED_EVALS)
PRESETS["flickr_144k_extended"] = dict(
    PRESETS["flickr_144k"], test_splits=("test+test_offscreen",), test_evals=_EXTENDED_EVALS)
EXTENDED_PRESETS = ("vggsound_144k_extended", "flickr_144k_extended")


def apply_preset(config: ml_collections.ConfigDict, preset: str) -> ml_collections.ConfigDict:
  """Sets `preset`'s dataset and training settings on `config` (in place, also
  returned); "" is the demo and changes nothing."""
  if not preset:
    return config
  if preset not in PRESETS:
    raise ConfigError(f"unknown dataset preset {preset!r}; available: {', '.join(PRESETS)}")
  p = PRESETS[preset]
  c = config
  c.dataset.name = p["dataset"]
  c.dataset.train_split = "train"
  c.dataset.validation_split = "validation"
  # The builders' validation splits are held-out training examples without
  # boxes, so model selection uses audio->image retrieval on them (never test).
  c.checkpoint.best_metric = "val_r1"
  c.dataset.test_splits = tuple(p["test_splits"])
  c.dataset.build_if_missing = False  # real data: the user builds it from their files
  c.dataset.image_size = p["image_size"]
  c.dataset.augment = p["augment"]
  c.audio = default.audio_config(p["audio"])
  c.model.width = p["width"]
  c.eval.size = p["eval_size"]
  c.eval.protocol = p["protocol"]
  c.eval.success_threshold = p["success_threshold"]
  c.batch_size = p["batch_size"]
  c.num_epochs = p["num_epochs"]
  if "learning_rate" in p:
    c.optimizer.learning_rate = p["learning_rate"]
  if "test_evals" in p:
    c.evals.test = tuple(p["test_evals"])
  if "visual_backbone" in p:
    c.model.visual_backbone = p["visual_backbone"]
    c.model.init_visual = p["init_visual"]
    c.model.visual_bn = p["visual_bn"]
    c.model.visual_trunk = p["visual_trunk"]
    c.optimizer.pretrained_lr_scale = p["pretrained_lr_scale"]
  return c
