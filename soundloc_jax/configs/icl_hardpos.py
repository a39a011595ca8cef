"""ICL x HardPos: the previous epoch's pseudo-labels and mined semantic positives.

`--config=configs/icl_hardpos.py[:PRESET][,neighbours=KIND]`
  PRESET   "" (default): the embedded av_digits demo; stamps, stamps128: the
           real-media benchmark built offline (96 / 128 px); stamps_imagenet,
           stamps128_imagenet: the same with the ImageNet visual stream
           (configs/datasets.py: every stamps preset of the other methods).
  KIND     mined (default): neighbours from the file `python -m soundloc_jax.mine
           --workdir=BASELINE_WORKDIR` writes from a finished Vanilla-LVS run
           (`configs/lvs.py:,variant=vanilla`), passed with
           --config.method.neighbours_path=BASELINE_WORKDIR/neighbours.npz (as
           HardPos; mining is not counted in the budget); random: K random
           examples per modality (the Random HP control).

The loss (methods/icl_hardpos.py; every choice and its reason in
docs/methods.md, "ICL x HardPos") reads ICL's fields (tau, delta_v, delta_a,
use_itr, use_intra, init_epochs, sample_fraction, the teacher guard) and
HardPos's (epsilon, mask_tau, positives, negative_anchor, neighbours,
neighbours_path, num_neighbours), all at their methods' defaults, plus:
  mined_region = "teacher"     the mined pairs' positive region from the
                               teacher's map of that pair (Eq. 4); "soft":
                               HardPos's soft-masked score.
  inter_positives = "teacher"  Eq. 6's batch relation kept; "mined": replaced
                               by the mined audio sets; "off".
  negative_anchor = "both"     chosen by the level-shortcut test
                               (tests/icl_hardpos_losses_test.py): with one
                               anchor, per-side levels lower the loss with no
                               localization ("image": through P_v, P_c;
                               "audio": through P_a, P_c); with "both" none do.
  num_neighbours = 300 (demo) / 100 (stamps), as configs/hard_positive.py.
"""

import ml_collections

from soundloc_jax.configs import datasets, default, hard_positive

NEIGHBOURS = hard_positive.NEIGHBOURS
PRESETS = ("",) + datasets.STAMPS_PRESETS


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  preset, options = default.parse_config_arg(arg, config_file="configs/icl_hardpos.py",
                                             presets=PRESETS,
                                             choices={"neighbours": ("mined", NEIGHBOURS)})
  c = default.get_config()  # ICL's and HardPos's values are default.py's method.* defaults
  c.method.name = "icl_hardpos"
  c.method.neighbours = options["neighbours"]
  c.method.negative_anchor = "both"  # the shortcut test's choice (module docstring)
  c.method.num_neighbours = (hard_positive.STAMPS_NUM_NEIGHBOURS if preset
                             else hard_positive.DEMO_NUM_NEIGHBOURS)
  return datasets.apply_preset(c, preset)
