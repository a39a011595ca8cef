"""EfficientNet-Lite0 state_dicts (efficientnet_pytorch names) <-> our NNX
`EfficientNetLite0`, and the init_visual folders of that backbone.

Key mapping (torch -> ours), every tensor's shape checked before anything is
assigned:
  `_conv_stem.weight` `[32, 3, 3, 3]` (OIHW)      -> `conv_stem.kernel` (HWIO)
  `_blocks.N._expand_conv|_project_conv.weight` `[O, I, 1, 1]`
                                                 -> `blocks[N].expand_conv|project_conv.kernel` `[I, O]`
  `_blocks.N._depthwise_conv.weight` `[C, 1, k, k]`
                                                 -> `blocks[N].depthwise_conv.kernel` `[k, k, C]`
  `_conv_head.weight` `[1280, 320, 1, 1]`         -> `conv_head.kernel` `[320, 1280]`
  `_fc.weight` `[1000, 1280]`, `_fc.bias`         -> `fc.kernel` `[1280, 1000]`, `fc.bias`
  `{bn}.weight / bias / running_mean / running_var`
                                                 -> `{bn}.scale / bias / mean / var`
  (`_bn0`, `_bn1`, `_blocks.N._bn0|_bn1|_bn2`; `num_batches_tracked` dropped).

A folder written by `save_dir` holds `efficientnet_lite0.npz` (every variable
of the whole classifier by NNX path, e.g. `params/blocks/3/depthwise_conv/kernel`,
`batch_stats/bn1/mean`) and `info.json` (`format` = `FORMAT`, `backbone`,
`source`, `labels`: the ImageNet class names when known). `load_dir` fills a
whole or truncated `EfficientNetLite0` from it: the blocks past a truncation,
the head and the classifier are what a truncated trunk may leave unread.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np

from soundloc_jax.models.efficientnet import EfficientNetLite0
from soundloc_jax.tools.resnet_weights import (WeightsError, assign_stored, flat_variables,
                                               read_npz)

WEIGHTS_FILE = "efficientnet_lite0.npz"
INFO_FILE = "info.json"
FORMAT = "soundloc_jax.efficientnet_lite0.v1"
BACKBONE = "efficientnet_lite0"
_BN_FIELDS = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"),
              ("running_var", "var"))


def _stem(w):
  return w.transpose(2, 3, 1, 0)        # OIHW -> HWIO


def _pointwise(w):
  return w[:, :, 0, 0].T                # [O, I, 1, 1] -> [I, O]


def _depthwise(w):
  return w[:, 0].transpose(1, 2, 0)     # [C, 1, k, k] -> [k, k, C]


def _linear(w):
  return w.T                            # [O, I] -> [I, O]


def _same(w):
  return w


# The torch rank each layout change expects (anything else is reported as a bad shape).
_NDIM = {_stem: 4, _pointwise: 4, _depthwise: 4, _linear: 2}


def torch_entries(model: EfficientNetLite0) -> dict:
  """`{torch key: (nnx Variable, convert)}` for every weight of `model` (whole)."""
  entries = {}

  def bn(name, module):
    for theirs, ours in _BN_FIELDS:
      entries[f"{name}.{theirs}"] = (getattr(module, ours), _same)

  entries["_conv_stem.weight"] = (model.conv_stem.kernel, _stem)
  bn("_bn0", model.bn0)
  for n, block in enumerate(model.blocks):
    prefix = f"_blocks.{n}"
    if block.expand_conv is not None:
      entries[f"{prefix}._expand_conv.weight"] = (block.expand_conv.kernel, _pointwise)
      bn(f"{prefix}._bn0", block.bn0)
    entries[f"{prefix}._depthwise_conv.weight"] = (block.depthwise_conv.kernel, _depthwise)
    bn(f"{prefix}._bn1", block.bn1)
    entries[f"{prefix}._project_conv.weight"] = (block.project_conv.kernel, _pointwise)
    bn(f"{prefix}._bn2", block.bn2)
  if model.conv_head is not None:
    entries["_conv_head.weight"] = (model.conv_head.kernel, _pointwise)
    bn("_bn1", model.bn1)
    entries["_fc.weight"] = (model.fc.kernel, _linear)
    entries["_fc.bias"] = (model.fc.bias, _same)
  return entries


def assign_from_torch(model: EfficientNetLite0, state_dict: dict, source: str) -> set:
  """Copies the reference's tensors into `model`; returns the keys used.
  `WeightsError` names `source` and the key of a missing tensor or a wrong
  shape (nothing is assigned then)."""
  converted = []
  for key, (variable, convert) in torch_entries(model).items():
    if key not in state_dict:
      raise WeightsError(f"{source}: missing tensor {key} (not an efficientnet_pytorch "
                         "EfficientNet-Lite0?)")
    theirs = np.asarray(state_dict[key])
    want = tuple(variable.get_value().shape)
    value = convert(theirs) if theirs.ndim == _NDIM.get(convert, theirs.ndim) else theirs
    if value.shape != want:
      raise WeightsError(f"{source}: {key} has shape {theirs.shape}, which does not fit "
                         f"EfficientNet-Lite0's {want} (after the layout change)")
    converted.append((variable, value.astype(np.float32)))
  for variable, value in converted:
    variable.set_value(jnp.asarray(value))
  return set(torch_entries(model))


def save_dir(model: EfficientNetLite0, directory: str, *, source: str,
             labels: list | None = None) -> str:
  """Writes `model`'s variables as `directory/efficientnet_lite0.npz` + `info.json`."""
  os.makedirs(directory, exist_ok=True)
  arrays = {k: np.asarray(v.get_value(), np.float32) for k, v in flat_variables(model).items()}
  np.savez(os.path.join(directory, WEIGHTS_FILE), **arrays)
  info = {"format": FORMAT, "backbone": BACKBONE, "source": source}
  if labels:
    info["labels"] = list(labels)
  with open(os.path.join(directory, INFO_FILE), "w") as f:
    json.dump(info, f, indent=1)
  return os.path.join(directory, WEIGHTS_FILE)


def _may_stay_unread(key: str, num_blocks: int) -> bool:
  parts = key.split("/")
  if parts[1] in ("conv_head", "bn1", "fc"):
    return True
  return parts[1] == "blocks" and int(parts[2]) >= num_blocks


def load_dir(model: EfficientNetLite0, directory: str,
             field: str = "config.model.init_visual") -> None:
  """Sets `model`'s variables (whole or truncated) from `save_dir`'s files; a
  ConfigError naming `field` and the file when it is missing or does not fit."""
  path = os.path.join(os.path.expanduser(directory), WEIGHTS_FILE)
  stored = read_npz(path, field, f"import_efficientnet_lite0 --out={directory}")
  assign_stored(flat_variables(model), stored, path, field,
                unread_ok=lambda k: _may_stay_unread(k, len(model.blocks)))


def read_info(directory: str) -> dict:
  """`info.json` of a weights folder ({} when it has none)."""
  path = os.path.join(os.path.expanduser(directory), INFO_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)
