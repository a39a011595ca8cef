"""`config.model.init_visual`: which weights folder fits which visual backbone.

`load_init_visual(model, backbone, directory)` fills `model.visual` (an
`AVModel`'s) from a folder an importer wrote: `import_torchvision_resnet18`
for "resnet18" (`resnet_weights`), `import_efficientnet_lite0` for
"efficientnet_lite0" (`efficientnet_weights`, into the stream's trunk; its
projection stays random). The folder's info.json `format` must be the
backbone's; a folder of the other backbone is refused in one line naming it
and the setting that would use it.
"""

from __future__ import annotations

import os

from soundloc_jax.errors import ConfigError
from soundloc_jax.tools import efficientnet_weights, resnet_weights

FIELD = "config.model.init_visual"
# backbone -> (info.json format, loader(model.visual, directory), importer command)
LOADERS = {
    "resnet18": (resnet_weights.FORMAT,
                 lambda visual, d: resnet_weights.load_dir(visual, d, FIELD),
                 "import_torchvision_resnet18 --checkpoint=FILE"),
    "efficientnet_lite0": (efficientnet_weights.FORMAT,
                           lambda visual, d: efficientnet_weights.load_dir(visual.trunk, d, FIELD),
                           "import_efficientnet_lite0"),
}
_BACKBONE_OF_FORMAT = {fmt: name for name, (fmt, _, _) in LOADERS.items()}


def load_init_visual(model, backbone: str, directory: str) -> None:
  """Sets `model.visual` from `directory`; ConfigError (one line) when the folder
  is missing, of another backbone, or does not fit."""
  fmt, loader, importer = LOADERS[backbone]
  if not os.path.isdir(os.path.expanduser(directory)):
    raise ConfigError(f"{FIELD}: {directory} does not exist (write it with python -m "
                      f"soundloc_jax.tools.{importer} --out={directory})")
  found = efficientnet_weights.read_info(directory).get("format")
  if found is not None and found != fmt:
    other = _BACKBONE_OF_FORMAT.get(found, found)
    raise ConfigError(f"{FIELD}: {directory} holds {other} weights, but "
                      f"config.model.visual_backbone is {backbone!r} (set "
                      f"config.model.visual_backbone={other}, or import {backbone} weights)")
  loader(model.visual, directory)
