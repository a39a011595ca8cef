"""EZ-VSL baseline ("Localizing Visual Sounds the Easy Way"), optional extra
baseline of issue 6: multiple-instance contrastive learning (max over patches).

`--config=configs/ezvsl.py[:PRESET]`
  PRESET    "" (default): the embedded av_digits demo; vggsound_144k or
            flickr_144k: the real-data settings of HardPos Tables 1 and 2
            (configs/datasets.py), the training sets EZ-VSL also reports;
            stamps, stamps128: the real-media benchmark built offline (96 / 128 px).

Values (the loss rules are in `soundloc_jax/methods/ezvsl.py`):
  temperature = 0.03        EZ-VSL's training temperature.
  model.audio_pool = "max"  EZ-VSL's audio ResNet-18 max-pools its last map.
  model.layer4_stride = 2   real-data presets only: EZ-VSL's visual map is
                            the plain ResNet-18's 7x7 at 224 (LVS, HardPos
                            and ICL keep layer4 at stride 1: 14x14); the
                            demo keeps its 4x4 map (stride 2 would leave 2x2,
                            one patch per cell).
Not reproduced: EZ-VSL's projection heads (a 1x1 convolution and a linear
layer to 512 dims after the trunks), its object-guided localization at
inference and its multi-modal feature dropout (heatmaps are the plain cosine
map of the trunks' features).
"""

import ml_collections

from soundloc_jax.configs import datasets, default

PRESETS = ("", "vggsound_144k", "flickr_144k") + datasets.EXTENDED_PRESETS + \
    datasets.STAMPS_PRESETS


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  preset, _ = default.parse_config_arg(arg, config_file="configs/ezvsl.py", presets=PRESETS,
                                       choices={})
  c = default.get_config()
  c.method.name = "ezvsl"
  c.method.temperature = 0.03
  c.model.audio_pool = "max"
  c = datasets.apply_preset(c, preset)
  if preset and preset not in datasets.STAMPS_PRESETS:  # stamps keeps its 6x6 / 8x8 maps
    c.model.layer4_stride = 2
  return c
