"""LVS baseline ("Localizing Visual Sounds the Hard Way"), as HardPos uses it.

`--config=configs/lvs.py[:PRESET][,variant=VARIANT]`
  PRESET    "" (default): the embedded av_digits demo; vggsound_144k or
            flickr_144k: the real-data settings of HardPos Tables 1 and 2
            (configs/datasets.py), so the baseline rows and the model HardPos
            mines with train on the same data as HardPos itself; stamps, stamps128: the
            real-media benchmark built offline (data_builders/stamps) at 96 / 128 px.
  VARIANT   full (default): tri-map + hard-negative logit (method "lvs");
            vanilla: neither (method "lvs_vanilla", HardPos's Vanilla-LVS,
            the model whose embeddings HardPos mines neighbours with).

Values (the defaults of `method.*` in default.py; the loss rules are in
`soundloc_jax/methods/lvs.py`):
  epsilon = 0.65, mask_tau = 0.03   LVS / HardPos (Sec. 3.2), on raw cosine.
  epsilon2 = 0.4                    LVS's tri-map threshold.
  temperature = 0.07                LVS's code divides all logits by 0.07.
  negative_pooling = "masked"       other samples' maps are soft-masked with
                                    their own masks, as LVS's released model.py
                                    does. "mean" (spatial means, HardPos Eq. 5
                                    as written) is kept as an option: with it
                                    the loss falls to ~0.004 on the demo and
                                    ~0.0006 on real photos without learning
                                    (positives ~0.97, negatives ~0.15: every
                                    positive map saturates while the means of
                                    the negatives stay low; docs/methods.md).
"""

import ml_collections

from soundloc_jax.configs import datasets, default

VARIANTS = {"full": "lvs", "vanilla": "lvs_vanilla"}
PRESETS = ("", "vggsound_144k", "flickr_144k") + datasets.EXTENDED_PRESETS + \
    datasets.STAMPS_PRESETS


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  preset, options = default.parse_config_arg(arg, config_file="configs/lvs.py",
                                             presets=PRESETS,
                                             choices={"variant": ("full", VARIANTS)})
  variant = options["variant"]

  c = default.get_config()  # the values above are default.py's method.* defaults
  c.method.name = VARIANTS[variant]
  c.method.variant = variant
  return datasets.apply_preset(c, preset)
