"""`python -m soundloc_jax.tools.classify --weights=DIR IMAGE...`: the ImageNet
top-5 of each image under imported weights, the check that an importer's
folder (`import_efficientnet_lite0` or `import_torchvision_resnet18`) holds
the network it should.

Prints one JSON line per image, in the order given:
  {"image": PATH, "top5": [[class_index, probability, name], ...]}
(`name` is "" when the folder records no class names). Each image is read by
`media.read_image`, its shorter side resized (bicubic) to `size * 256 / 224`
and its centre `size x size` crop taken (`--size`, default 224: the
evaluation crop both networks were trained for), then scaled as the
backbone's weights expect (`av_model.VISUAL_BACKBONES`). The backbone is read
from the folder's info.json. Errors (a folder that is no weights folder, a
folder without the classifier, an unreadable image) are one line naming the
path, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 `[H, W, 3]` -> the centre `[size, size, 3]` after a bicubic resize of the
  shorter side to `round(size * 256 / 224)`."""
  from PIL import Image
  short = int(round(size * 256 / 224))
  h, w = image.shape[:2]
  scale = short / min(h, w)
  nw, nh = max(size, int(round(w * scale))), max(size, int(round(h * scale)))
  resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))
  top, left = (nh - size) // 2, (nw - size) // 2
  return resized[top:top + size, left:left + size]


def load_network(directory: str, field: str = "--weights"):
  """`(model, normalize, last_map, info)` of an ImageNet importer's folder, in
  eval mode: `last_map(model, normalized image)` is the classifier's last
  convolutional map (EfficientNet-Lite0's head, ResNet-18's layer4 at stride
  2). ConfigError naming `field` and the folder when it is not one of ours."""
  from flax import nnx

  from soundloc_jax.errors import ConfigError
  from soundloc_jax.models import av_model, efficientnet
  from soundloc_jax.models.resnet import ResNet18
  from soundloc_jax.tools import efficientnet_weights, resnet_weights
  info = efficientnet_weights.read_info(directory)
  fmt = info.get("format")
  if fmt == efficientnet_weights.FORMAT:
    model = efficientnet.EfficientNetLite0(rngs=nnx.Rngs(0))
    efficientnet_weights.load_dir(model, directory, field=field)
    normalize, last_map = efficientnet.normalize, lambda net, x: net.features(x)
  elif fmt == resnet_weights.FORMAT:
    model = ResNet18(3, width=info.get("width", 64), layer4_stride=2, rngs=nnx.Rngs(0))
    resnet_weights.load_dir(model, directory, field=field)
    normalize, last_map = av_model.normalize_image, lambda net, x: net(x)
  else:
    raise ConfigError(f"{field}: {directory} is not a folder written by "
                      "soundloc_jax.tools.import_efficientnet_lite0 or "
                      "import_torchvision_resnet18 (no known info.json format)")
  model.eval()
  return model, normalize, last_map, info


def _resnet_classifier(directory):
  import jax.numpy as jnp

  from soundloc_jax.errors import ConfigError
  from soundloc_jax.tools import resnet_weights
  path = f"{directory}/{resnet_weights.WEIGHTS_FILE}"
  with np.load(path) as npz:
    if resnet_weights.FC_KERNEL not in npz.files:
      raise ConfigError(f"--weights: {path} has no classifier (fc); import the torchvision "
                        "file again with python -m soundloc_jax.tools.import_torchvision_resnet18")
    return jnp.asarray(npz[resnet_weights.FC_KERNEL]), jnp.asarray(npz[resnet_weights.FC_BIAS])


def load_classifier(directory: str):
  """`(logits_fn, labels)` for a weights folder: `logits_fn(uint8 [B, S, S, 3])`
  -> `[B, K]`. ConfigError naming the folder when it is not one of ours."""
  import jax.numpy as jnp

  from soundloc_jax.tools import efficientnet_weights
  model, normalize, last_map, info = load_network(directory)
  if info["format"] == efficientnet_weights.FORMAT:
    fn = lambda x: model(normalize(x))  # noqa: E731
  else:
    kernel, bias = _resnet_classifier(directory)
    fn = lambda x: jnp.mean(last_map(model, normalize(x)), axis=(1, 2)) @ kernel + bias  # noqa: E731
  return fn, info.get("labels") or []


def top5(logits: np.ndarray, labels: list) -> list:
  """`[[index, probability, name], ...]` of the five largest softmax entries."""
  z = np.asarray(logits, np.float64)
  p = np.exp(z - z.max())
  p /= p.sum()
  order = np.argsort(-p, kind="stable")[:5]
  return [[int(i), round(float(p[i]), 6), labels[i] if i < len(labels) else ""] for i in order]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m soundloc_jax.tools.classify",
      description="ImageNet top-5 of images under an imported weights folder")
  parser.add_argument("--weights", required=True, help="a folder written by an importer")
  parser.add_argument("--size", type=int, default=224, help="centre crop size (default 224)")
  parser.add_argument("images", nargs="+", help="image files")
  args = parser.parse_args(argv)
  from soundloc_jax import media
  from soundloc_jax.errors import UserError
  try:
    fn, labels = load_classifier(args.weights)
    for path in args.images:
      image = centre_crop(media.read_image(path, exif_transpose=True), args.size)
      logits = np.asarray(fn(image[None]))[0]
      print(json.dumps({"image": path, "top5": top5(logits, labels)}), flush=True)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
