"""Which input scaling the EfficientNet-Lite0 weights expect, measured: the
top-1 class and its probability on photos under `(x - 127) / 128` (the
scaling of TensorFlow's EfficientNet-Lite training) and under ImageNet's
mean / std (torchvision's), with `tools.classify`'s crop.

  python scripts/imagenet_check.py --weights=DIR IMAGE...

Images with an alpha channel (tuxpaint's stamps) are composited on white.
Prints one line per image and scaling, then the mean top-1 probability per
scaling. The numbers in docs/methods.md come from this command.
"""

import argparse

import jax
import numpy as np
from flax import nnx
from PIL import Image

from soundloc_jax.models import av_model, efficientnet
from soundloc_jax.tools import classify, efficientnet_weights

SCALINGS = {"(x-127)/128": efficientnet.normalize, "imagenet mean/std": av_model.normalize_image}


def read_on_white(path):
  image = Image.open(path).convert("RGBA")
  white = Image.new("RGBA", image.size, (255, 255, 255, 255))
  return np.asarray(Image.alpha_composite(white, image).convert("RGB"))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--weights", required=True)
  parser.add_argument("images", nargs="+")
  args = parser.parse_args()
  model = efficientnet.EfficientNetLite0(rngs=nnx.Rngs(0))
  efficientnet_weights.load_dir(model, args.weights, field="--weights")
  model.eval()
  labels = efficientnet_weights.read_info(args.weights).get("labels", [])
  top1 = {name: [] for name in SCALINGS}
  for path in args.images:
    x = classify.centre_crop(read_on_white(path), 224)[None]
    for name, scale in SCALINGS.items():
      p = np.asarray(jax.nn.softmax(model(scale(x))))[0]
      i = int(p.argmax())
      top1[name].append(p[i])
      print(f"{path}\t{name}\t{i}\t{labels[i] if labels else ''}\t{p[i]:.3f}")
  for name, values in top1.items():
    print(f"mean top-1 probability, {name}: {np.mean(values):.3f} over {len(values)} images")


if __name__ == "__main__":
  main()
