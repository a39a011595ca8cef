"""Localization evaluation, in five modules:

  protocol.py     the official cIoU / AUC protocol (LVS test code, and ICL's
                  fixed threshold), the pointing game, summaries; pure NumPy
  resize.py       the OpenCV-exact bilinear resize the protocol upsamples with
  annotations.py  ground-truth maps from each dataset's boxes (official rules)
  evaluators.py   running a model over a split and scoring it: the evaluators
                  `config.evals` lists, each yielding (name, value)
  plots.py        success curves, overlay grids, per-split reports

These modules never import the trainer, the workdir or inference.
"""
