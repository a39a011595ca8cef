"""HardPos ("Learning Sound Localization Better from Semantically Similar Samples").

`--config=configs/hard_positive.py[:PRESET][,neighbours=KIND]`
  PRESET      "" (default): the embedded av_digits demo; vggsound_144k
              (Table 1) or flickr_144k (Table 2): real data (configs/datasets.py);
              stamps, stamps128: the real-media benchmark built offline (96 / 128 px).
  KIND        mined (default): hard positives from the neighbours file that
              `python -m soundloc_jax.mine --workdir=BASELINE_WORKDIR` writes
              from a Vanilla-LVS run (`configs/lvs.py:,variant=vanilla`); pass
              it with --config.method.neighbours_path=BASELINE_WORKDIR/neighbours.npz.
              random: "Random HP", K random examples per modality instead.

Values (the defaults of `method.*` in default.py; the loss rules are in
`soundloc_jax/methods/hardpos.py`):
  epsilon = 0.65, mask_tau = 0.03   Sec. 3.2 (following LVS), raw cosine.
  temperature = 0.07                Eq. 5-6 show no temperature; LVS's code
                                    divides its logits by 0.07, so do we.
  negative_pooling = "masked"       negatives soft-masked as LVS's released
                                    code does; "mean" (Eq. 5's spatial means)
                                    collapses like LVS's (configs/lvs.py).
  positives = "bavc"                the terms of P_i (Eq. 5): b base pair,
                                    a audio neighbour, v visual neighbour,
                                    c both; a subset ("ba", "b") ablates them.
  negative_anchor = "both"          what the negatives share with the positives:
                                    "both" (rows per anchor; methods/hardpos.py
                                    docstring), a deviation from Eq. 5, which
                                    writes "audio" (A_i, V_l) and opens a
                                    per-audio level shortcut for P_a and P_c;
                                    "image" (A_l, V_i) as LVS's code. Chosen
                                    on the demo and stamps evidence in
                                    docs/results.md (HardPos negatives' anchor).
  neighbour_gradient = True         the paper's loss; False stop-gradients the
                                    neighbours' features (a diagnostic, see the
                                    methods/hardpos.py docstring and
                                    docs/notes/2026-11-28-hardpos-on-the-demo.md).
  num_neighbours (K) = 1000         Sec. 3.2 (VGGSound / Flickr 144k). The
                                    demo uses 300: the paper picks K near the
                                    clips per class (300-1000 in VGGSound), and
                                    the demo's 4,000 examples hold ~400 per
                                    sounding class; stamps 100 (~130 per
                                    sounding group). Only the first K columns
                                    of the mined file are used.
"""

import ml_collections

from soundloc_jax.configs import datasets, default

NEIGHBOURS = ("mined", "random")
PRESETS = ("", "vggsound_144k", "flickr_144k") + datasets.EXTENDED_PRESETS + \
    datasets.STAMPS_PRESETS
DEMO_NUM_NEIGHBOURS = 300
# stamps: ~130 training examples per sounding group (6,000 over 45 groups).
STAMPS_NUM_NEIGHBOURS = 100


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  preset, options = default.parse_config_arg(arg, config_file="configs/hard_positive.py",
                                             presets=PRESETS,
                                             choices={"neighbours": ("mined", NEIGHBOURS)})
  c = default.get_config()  # the values above are default.py's method.* defaults
  c.method.name = "hardpos"
  c.method.neighbours = options["neighbours"]
  if not preset or preset in datasets.STAMPS_PRESETS:
    c.method.num_neighbours = STAMPS_NUM_NEIGHBOURS if preset else DEMO_NUM_NEIGHBOURS
  return datasets.apply_preset(c, preset)
