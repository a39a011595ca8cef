"""`python -m soundloc_jax.tools.import_lvs --checkpoint=lvs_vggss.tar --out=WORKDIR [--test_set=vggss]`.

Turns a released LVS model ("Localizing Visual Sounds the Hard Way": the
`.pth.tar` / `.tar` files of its project page, which the user downloads; we
never do) into a workdir that `soundloc_jax.load(WORKDIR)` and
`python -m soundloc_jax.main --config=configs/lvs_released.py --workdir=WORKDIR
--mode=eval` read: `config.json` (`configs/lvs_released.py`, written as
training writes it) and an orbax checkpoint at step 0 (student = teacher =
the LVS weights; a fresh optimizer state).

LVS's file (read without torch, `torch_pickle`; the release is torch 1.3's
legacy format) holds `model_state_dict` of `nn.DataParallel(AVENet)`:
`module.imgnet.*` (visual) and `module.audnet.*` (audio) ResNet-18s in
torchvision's layout, each carrying three stems (`conv1` RGB, `conv1_a`
1-channel, `conv1_flow` 6-channel) and an unused `fc`. The visual stream
takes `imgnet.conv1`, the audio stream `audnet.conv1_a`; the other stems,
`fc.*` and `num_batches_tracked` are dropped; anything else is an error.
"""

from __future__ import annotations

import os
import sys

import argparse

UNUSED_STEMS = ("imgnet.conv1_a.", "imgnet.conv1_flow.", "audnet.conv1.", "audnet.conv1_flow.",
                "imgnet.fc.", "audnet.fc.")


def _unused(key: str) -> bool:
  return key.startswith(UNUSED_STEMS) or key.endswith(".num_batches_tracked")


def import_checkpoint(checkpoint: str, out: str, test_set: str = "vggss") -> dict:
  """Writes the workdir `out`; returns `{"width", "step", "workdir"}`."""
  import numpy as np
  from flax import nnx

  from soundloc_jax.configs import lvs_released
  from soundloc_jax import checkpointing, workdir
  from soundloc_jax import state as state_lib
  from soundloc_jax.tools import resnet_weights, torch_pickle

  out = os.path.abspath(os.path.expanduser(out))
  ckpt_dir = os.path.join(out, "checkpoints")
  if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise resnet_weights.WeightsError(f"{out} already holds checkpoints; choose a new --out")
  state_dict = resnet_weights.find_state_dict(torch_pickle.load(checkpoint), checkpoint)
  stem = state_dict.get("imgnet.conv1.weight")
  if stem is None or np.ndim(stem) != 4:
    raise resnet_weights.WeightsError(f"{checkpoint}: no imgnet.conv1.weight (not an LVS "
                                      "model checkpoint?)")
  config = lvs_released.get_config(test_set)
  config.model.width = int(stem.shape[0])
  optimizer = state_lib.make_optimizer(config)
  graphdef, state = state_lib.create_train_state(config, optimizer)
  model = nnx.merge(graphdef, state["params"], state["batch_stats"], copy=True)
  used = resnet_weights.assign_from_torch(model.visual, state_dict, checkpoint, "imgnet.")
  used |= resnet_weights.assign_from_torch(model.audio, state_dict, checkpoint, "audnet.",
                                           stem="conv1_a")
  resnet_weights.check_leftovers(state_dict, used, checkpoint, ignored=_unused)
  _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  params, batch_stats = nnx.as_pure(params), nnx.as_pure(batch_stats)
  state = state_lib.refresh_teacher(dict(state, params=params, batch_stats=batch_stats,
                                          opt_state=optimizer.init(params)))
  os.makedirs(out, exist_ok=True)
  workdir.check_and_record_config(config, out, has_checkpoint=False)
  ckpt = checkpointing.Checkpointer(ckpt_dir)
  try:
    ckpt.save(0, state, {"step": 0, "epoch": -1, "epoch_complete": True,
                         "imported_from": os.path.abspath(checkpoint), "source": "LVS release"})
  finally:
    ckpt.close()
  return {"width": config.model.width, "step": 0, "workdir": out}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m soundloc_jax.tools.import_lvs",
      description="the released LVS model -> a workdir for soundloc_jax.load and --mode=eval")
  parser.add_argument("--checkpoint", required=True, help="the LVS .pth.tar / .tar file")
  parser.add_argument("--out", required=True, help="workdir to create")
  parser.add_argument("--test_set", default="vggss", choices=("vggss", "flickr"),
                      help="the configs/lvs_released.py preset config.json records")
  args = parser.parse_args(argv)
  from absl import logging

  from soundloc_jax.errors import UserError
  logging.set_verbosity(logging.WARNING)  # orbax's info lines
  try:
    info = import_checkpoint(args.checkpoint, args.out, args.test_set)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {info['workdir']} (width-{info['width']} LVS model, checkpoint step 0); "
        f"evaluate with python -m soundloc_jax.main --config=configs/lvs_released.py:"
        f"{args.test_set} --workdir={info['workdir']} --mode=eval")
  return 0


if __name__ == "__main__":
  sys.exit(main())
