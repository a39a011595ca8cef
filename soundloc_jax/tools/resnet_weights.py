"""torchvision ResNet-18 state_dicts <-> our NNX `ResNet18`, and the init_visual files.

Key mapping (torch -> ours; `P` = an optional prefix such as `module.imgnet.`):
  `P{stem}.weight` (OIHW)                 -> `conv1.kernel` (HWIO); stem is
                                             `conv1`, or `conv1_a` for LVS audio
  `P{bn}.weight/bias/running_mean/running_var`
                                          -> `{bn}.scale/bias/mean/var`
  `P layerL.B.conv1|conv2|bn1|bn2.*`      -> `layers[L-1][B].conv1|...`
  `P layerL.B.downsample.0.* / .1.*`      -> `layers[L-1][B].downsample_conv / _bn`
`num_batches_tracked` and the classifier `fc.*` have no counterpart and are
dropped. Every tensor's shape is checked against the model before anything is
assigned; a mismatch names the key and both shapes.

`config.model.init_visual = DIR` starts the visual stream from `DIR/` written
by `save_dir`: `resnet18.npz` (one float32 array per variable, named by its
NNX path, e.g. `params/layers/0/1/bn2/scale`, `batch_stats/bn1/mean`) and
`info.json` (`format`, `width`, `in_channels`, `source`: where it came from,
and `labels` when the classifier is kept). The torchvision importer also keeps
the classifier as `fc/kernel` `[512, 1000]` and `fc/bias`, which only
`tools.classify` reads.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from soundloc_jax.errors import ConfigError, UserError
from soundloc_jax.models.resnet import ResNet18

WEIGHTS_FILE = "resnet18.npz"
INFO_FILE = "info.json"
FORMAT = "soundloc_jax.resnet18.v1"
# The ImageNet classifier, kept for tools.classify only (not a model variable).
FC_KERNEL, FC_BIAS = "fc/kernel", "fc/bias"
_BN_FIELDS = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"),
              ("running_var", "var"))


class WeightsError(UserError, ValueError):
  """A torch checkpoint that does not fit our ResNet-18."""


def torch_entries(resnet: ResNet18, prefix: str = "", stem: str = "conv1") -> dict:
  """`{torch key: (nnx Variable, is_conv)}` for every weight of `resnet`."""
  entries = {}

  def conv(name, module):
    entries[f"{prefix}{name}.weight"] = (module.kernel, True)

  def bn(name, module):
    for theirs, ours in _BN_FIELDS:
      entries[f"{prefix}{name}.{theirs}"] = (getattr(module, ours), False)

  conv(stem, resnet.conv1)
  bn("bn1", resnet.bn1)
  for i, layer in enumerate(resnet.layers):
    for j, block in enumerate(layer):
      name = f"layer{i + 1}.{j}"
      conv(f"{name}.conv1", block.conv1)
      bn(f"{name}.bn1", block.bn1)
      conv(f"{name}.conv2", block.conv2)
      bn(f"{name}.bn2", block.bn2)
      if block.downsample_conv is not None:
        conv(f"{name}.downsample.0", block.downsample_conv)
        bn(f"{name}.downsample.1", block.downsample_bn)
  return entries


def assign_from_torch(resnet: ResNet18, state_dict: dict, source: str, prefix: str = "",
                      stem: str = "conv1") -> set:
  """Copies `state_dict`'s ResNet-18 (under `prefix`) into `resnet`; returns the keys used.

  Raises `WeightsError` naming `source` and the key for a missing tensor or a
  shape that differs from the model's (nothing is assigned in that case)."""
  entries = torch_entries(resnet, prefix, stem)
  converted = []
  for key, (variable, is_conv) in entries.items():
    if key not in state_dict:
      raise WeightsError(f"{source}: missing tensor {key} (not a torchvision-layout ResNet-18?)")
    value = np.asarray(state_dict[key])
    if is_conv and value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    want = tuple(variable.get_value().shape)
    if value.shape != want:
      theirs = np.asarray(state_dict[key]).shape
      torch_want = (want[3], want[2], want[0], want[1]) if is_conv else want
      raise WeightsError(f"{source}: {key} has shape {tuple(theirs)}, the model expects "
                         f"{torch_want}")
    converted.append((variable, value.astype(np.float32)))
  for variable, value in converted:
    variable.set_value(jnp.asarray(value))
  return set(entries)


def check_leftovers(state_dict: dict, used: set, source: str, ignored) -> None:
  """Every key not used must be a known extra (`ignored(key)` true), else WeightsError."""
  extra = sorted(k for k in state_dict if k not in used and not ignored(k))
  if extra:
    raise WeightsError(f"{source}: {len(extra)} unexpected tensor(s), e.g. {extra[0]} "
                       "(a deeper ResNet, or another model?)")


def find_state_dict(obj, source: str, nested=("state_dict", "model_state_dict", "model")) -> dict:
  """The `{name: array}` dict of a loaded checkpoint: the object itself or one
  of the usual nesting keys, with DataParallel's `module.` prefix removed."""
  if isinstance(obj, dict):
    for key in nested:
      if isinstance(obj.get(key), dict):
        obj = obj[key]
        break
  if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
    raise WeightsError(f"{source}: holds no state_dict (expected a dict of named tensors)")
  if all(k.startswith("module.") for k in obj):
    obj = {k[len("module."):]: v for k, v in obj.items()}
  return obj


def flat_variables(module) -> dict:
  """`{"params/..." | "batch_stats/...": Variable}` of any NNX module, by NNX path."""
  out = {}
  for kind, filt in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
    for path, variable in nnx.to_flat_state(nnx.state(module, filt)):
      out["/".join([kind, *map(str, path)])] = variable
  return out


def save_dir(resnet: ResNet18, directory: str, *, in_channels: int, source: str,
             classifier: tuple | None = None, labels: list | None = None) -> str:
  """Writes `resnet`'s variables as `directory/resnet18.npz` + `info.json`.
  `classifier`, the torch `(fc.weight [K, C], fc.bias [K])`, is kept as
  `fc/kernel` `[C, K]` and `fc/bias` for `tools.classify` (training never reads
  it); `labels` (its class names) go into info.json."""
  os.makedirs(directory, exist_ok=True)
  arrays = {k: np.asarray(v.get_value(), np.float32) for k, v in flat_variables(resnet).items()}
  if classifier is not None:
    arrays[FC_KERNEL] = np.asarray(classifier[0], np.float32).T
    arrays[FC_BIAS] = np.asarray(classifier[1], np.float32)
  np.savez(os.path.join(directory, WEIGHTS_FILE), **arrays)
  info = {"format": FORMAT, "width": int(resnet.bn1.scale.get_value().shape[0]),
          "in_channels": in_channels, "source": source}
  if labels:
    info["labels"] = list(labels)
  with open(os.path.join(directory, INFO_FILE), "w") as f:
    json.dump(info, f, indent=1)
  return os.path.join(directory, WEIGHTS_FILE)


def load_dir(resnet: ResNet18, directory: str, field: str = "config.model.init_visual") -> None:
  """Sets `resnet`'s variables from `save_dir`'s files; ConfigError naming `field`
  and the directory when it is missing or does not fit the model."""
  path = os.path.join(os.path.expanduser(directory), WEIGHTS_FILE)
  if not os.path.isdir(os.path.expanduser(directory)):
    raise ConfigError(f"{field}: {directory} does not exist (write it with python -m "
                      "soundloc_jax.tools.import_torchvision_resnet18 --checkpoint=... "
                      f"--out={directory})")
  stored = read_npz(path, field, "import_torchvision_resnet18")

  def shape_hint(stored):
    width = stored.get("params/bn1/scale", np.zeros(0)).size
    return f" (the file holds a width-{width} ResNet-18; is config.model.width right?)"

  assign_stored(flat_variables(resnet), stored, path, field,
                unread_ok=lambda k: k in (FC_KERNEL, FC_BIAS), shape_hint=shape_hint)


def read_npz(path: str, field: str, importer: str) -> dict:
  """`{name: array}` of a weights folder's .npz; ConfigError naming `field`,
  the file and the importer command (`soundloc_jax.tools.<importer>`) when it
  cannot be read."""
  try:
    with np.load(path) as npz:
      return {k: npz[k] for k in npz.files}
  except (OSError, ValueError) as e:
    raise ConfigError(f"{field}: cannot read {path} ({type(e).__name__}); write it with "
                      f"python -m soundloc_jax.tools.{importer}") from None


def assign_stored(variables: dict, stored: dict, path: str, field: str, *,
                  unread_ok=lambda key: False, shape_hint=lambda stored: "") -> None:
  """Sets every variable of `variables` (`flat_variables`) from `stored`; every
  stored array must be used unless `unread_ok(name)`. Nothing is set when a
  name is missing, a shape differs (`shape_hint(stored)` is appended) or an
  array is left over: ConfigError naming `field` and `path`."""
  for key, variable in variables.items():
    want = tuple(variable.get_value().shape)
    if key not in stored:
      raise ConfigError(f"{field}: {path} has no {key}; not written by our importer?")
    if stored[key].shape != want:
      raise ConfigError(f"{field}: {path}: {key} has shape {stored[key].shape}, the model "
                        f"expects {want}{shape_hint(stored)}")
  extra = sorted(k for k in set(stored) - set(variables) if not unread_ok(k))
  if extra:
    raise ConfigError(f"{field}: {path} has {extra[0]}, which the model lacks")
  for key, variable in variables.items():
    variable.set_value(jnp.asarray(stored[key], variable.get_value().dtype))
