"""soundloc_jax: unsupervised visual sound source localization in JAX/Flax NNX.

Layers, bottom up: `errors`, `audio` (waveform -> log spectrogram), `media`
(the one decoder), `models` (ResNet-18 streams, `AVModel`), `methods` (one
module per method: losses, registry entries), `evaluation` (the official
protocol, ground truth, evaluators, plots), `input_pipeline` (grain over TFDS
array_record), `data` (datasets of a run), `checkpointing`, `workdir`
(records, metrics writer), `state` (train state, optimizer, predict
functions); then `train` (the loop), `evaluate` (test scoring), `inference`
(`load(workdir)` -> Localizer); and the command lines `main`, `localize`,
`mine`, `tfds_build`. `configs` and `data_builders` are the configs and TFDS
builders. There are no import cycles, and methods, evaluation, models and
media never import the loop, the workdir or inference (tests/imports_test.py).
"""

__version__ = "0.1.0"


def load(*args, **kwargs):
  """`soundloc_jax.inference.load(workdir, step=None) -> Localizer` (imported on
  first use, so `import soundloc_jax` stays light)."""
  from soundloc_jax.inference import load as _load
  return _load(*args, **kwargs)
