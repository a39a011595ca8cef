"""soundloc_jax: unsupervised visual sound source localization in JAX/Flax NNX.

Modules: `audio` (waveform -> log spectrogram), `models` (ResNet-18 streams,
`AVModel`), `losses` (ICL Eq. 1-7, batched), `methods` (name -> loss
registry), `input_pipeline` (grain over TFDS array_record), `train` (loop,
teacher refresh, checkpoints), `evaluation` (official cIoU/AUC protocol),
`evaluator` (scoring a model on a split), `main` (command line).
"""

__version__ = "0.1.0"


def load(*args, **kwargs):
  """`soundloc_jax.inference.load(workdir, step=None) -> Localizer` (imported on
  first use, so `import soundloc_jax` stays light)."""
  from soundloc_jax.inference import load as _load
  return _load(*args, **kwargs)
