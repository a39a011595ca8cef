"""`python -m soundloc_jax.tools.import_torchvision_resnet18 --checkpoint=FILE --out=DIR`.

Converts a torchvision ResNet-18 checkpoint the user already has (e.g. the
ImageNet `resnet18-f37072fd.pth` or `resnet18-5c106cde.pth`; nothing is
downloaded) into the files `config.model.init_visual=DIR` starts the visual
stream from (`resnet_weights.save_dir`). The file is read without torch
(`torch_pickle`); a state_dict saved from `nn.DataParallel` (`module.`
prefix) or nested under `state_dict` is accepted; `num_batches_tracked`
is dropped; the classifier `fc.*` is kept beside the trunk for
`tools.classify` (training does not read it). The width is read from `conv1.weight`
(64 for torchvision's own), so `config.model.width` must equal it.
"""

from __future__ import annotations

import argparse
import sys


def convert(checkpoint: str, out: str) -> dict:
  """Reads `checkpoint`, writes `out`; returns the info record written."""
  import numpy as np
  from flax import nnx

  from soundloc_jax.models.resnet import ResNet18
  from soundloc_jax.tools import resnet_weights, torch_pickle

  state_dict = resnet_weights.find_state_dict(torch_pickle.load(checkpoint), checkpoint)
  stem = state_dict.get("conv1.weight")
  if stem is None or np.ndim(stem) != 4:
    hint = ("an LVS model: use python -m soundloc_jax.tools.import_lvs"
            if "imgnet.conv1.weight" in state_dict else "not a torchvision ResNet-18?")
    raise resnet_weights.WeightsError(f"{checkpoint}: no 4-D conv1.weight ({hint})")
  width, in_channels = int(stem.shape[0]), int(stem.shape[1])
  resnet = ResNet18(in_channels, width=width, rngs=nnx.Rngs(0))
  used = resnet_weights.assign_from_torch(resnet, state_dict, checkpoint)
  resnet_weights.check_leftovers(
      state_dict, used, checkpoint,
      ignored=lambda k: k.startswith("fc.") or k.endswith(".num_batches_tracked"))
  classifier, labels = None, None
  if "fc.weight" in state_dict and "fc.bias" in state_dict:
    classifier = (state_dict["fc.weight"], state_dict["fc.bias"])
    if np.shape(classifier[0]) == (1000, 8 * width):
      from soundloc_jax.tools.import_efficientnet_lite0 import imagenet_labels
      labels = imagenet_labels()
  resnet_weights.save_dir(resnet, out, in_channels=in_channels, source=checkpoint,
                          classifier=classifier, labels=labels)
  return {"width": width, "in_channels": in_channels,
          "num_params": int(sum(np.size(state_dict[k]) for k in used))}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m soundloc_jax.tools.import_torchvision_resnet18",
      description="torchvision ResNet-18 .pth -> a directory for config.model.init_visual")
  parser.add_argument("--checkpoint", required=True, help="the torchvision ResNet-18 .pth file")
  parser.add_argument("--out", required=True, help="directory to write")
  args = parser.parse_args(argv)
  from soundloc_jax.errors import UserError
  try:
    info = convert(args.checkpoint, args.out)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.out}: width-{info['width']} ResNet-18, {info['num_params']:,} values; "
        f"train with --config.model.init_visual={args.out} --config.model.width={info['width']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
