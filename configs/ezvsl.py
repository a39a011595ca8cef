"""EZ-VSL baseline ("Localizing Visual Sounds the Easy Way"), optional extra
baseline of issue 6: multiple-instance contrastive learning (max over patches).

`--config=configs/ezvsl.py[:PRESET]`
  PRESET    "" (default): the embedded av_digits demo; vggsound_144k or
            flickr_144k: the real-data settings of HardPos Tables 1 and 2
            (configs/datasets.py), the training sets EZ-VSL also reports.

Values (the loss rules are in `soundloc_jax/ezvsl_losses.py`):
  temperature = 0.03   the sharp temperature EZ-VSL trains with.
Not reproduced: EZ-VSL's object-guided localization at inference and its
multi-modal feature dropout (heatmaps are the plain cosine map).
"""

import ml_collections

from configs import datasets, default

PRESETS = ("", "vggsound_144k", "flickr_144k")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  preset, _ = default.parse_config_arg(arg, config_file="configs/ezvsl.py", presets=PRESETS,
                                       choices={})
  c = default.get_config()
  c.method = ml_collections.ConfigDict()
  c.method.name = "ezvsl"
  c.method.temperature = 0.03
  return datasets.apply_preset(c, preset)
