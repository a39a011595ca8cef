"""The extended protocol's numbers of reference maps on the stamps benchmark:
each test split with its off-screen split (data_builders/stamps/README.md)
and the silence / noise probes, scored by `evaluators.score_with_offscreen`
as `scripts/compare_methods.py` scores every trained row.

  python scripts/offscreen_baselines.py --data_dir=D [--name=stamps/px128] [--draws=5]

Maps (no model; each is told which pair it sees only through the spectrogram
or the image it is given):
  oracle, follows the sound   the sounding object's box (cosine 1, -1
                              elsewhere) for the image's own sound; flat -1
                              for a sound from elsewhere, silence and noise:
                              the best a map can do (AP 1);
  oracle, image only          the same box map whatever the sound: a map that
                              lights the sounding object of every image, the
                              failure cIoU cannot see (AP at the positive
                              rate, 1/2 here: each image is heard once with its
                              own sound and once with another);
  centre guess                a Gaussian at the centre (`baselines.centre_prior`)
                              for every pair: one confidence for all;
  random                      uniform cosines at the feature resolution, new
                              for every pair: the mean over `--draws` draws.
Columns: AP and max-F1 under the default rule ("exact") and SLAVC's code rule,
the medians of the confidence (SLAVC's, `eval.extended.confidence`) on
visible and off-screen pairs, `lit_offscreen` (an off-screen pair confident,
>= 0.5, with its peak on an object), the silence probe's AP and how often an
image's own sound is more confident than silence and than noise. The cIoU of
a positive is that of the stamps preset's protocol (fixed, 224). Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

OFFSCREEN_OF = {"test": "test_offscreen", "test_unseen": "test_unseen_offscreen"}
COLUMNS = (("AP", "ap"), ("max-F1", "max_f1"), ("AP (SLAVC code rule)", "ap_slavc"),
           ("max-F1 (SLAVC code rule)", "max_f1_slavc"), ("conf visible p50", "conf_visible_p50"),
           ("conf off-screen p50", "conf_offscreen_p50"), ("off-screen lit", "lit_offscreen"),
           ("silence AP", "silence_ap"), ("own > silence", "own_above_silence"),
           ("own > noise", "own_above_noise"))


def _key(array) -> bytes:
  return np.ascontiguousarray(array).tobytes()


def reference_maps(source, fmt: str, size: int, image_size: int, feature: int, rng):
  """predict_fns of the reference maps (module docstring) for the pairs of
  `source` and its off-screen split (whose images are `source`'s): name ->
  fn(image, spectrogram); maps at the evaluation size `size`, images at the
  model input size `image_size`."""
  from soundloc_jax import input_pipeline
  from soundloc_jax.evaluation import annotations, baselines
  own, by_image = {}, {}
  for i in range(len(source)):
    ex = source[i]
    m = annotations.gt_map_from_boxes(ex["gt_boxes"], fmt, size) * 2 - 1
    own[_key(np.asarray(ex["spectrogram"], np.float16))] = m
    image = input_pipeline.eval_image(np.asarray(ex["image"]), image_size)
    by_image[_key(np.ascontiguousarray(image, dtype=np.uint8))] = m
  flat = np.full((size, size), -1.0, np.float32)

  def follows(image, spectrogram):
    return np.stack([own.get(_key(np.asarray(s, np.float16)), flat) for s in spectrogram])

  def image_only(image, spectrogram):
    return np.stack([by_image.get(_key(np.asarray(im)), flat) for im in image])

  prior = baselines.centre_prior(1, size)[0]

  def centre(image, spectrogram):
    return np.broadcast_to(prior, (len(image),) + prior.shape)

  def random(image, spectrogram):
    return rng.uniform(-1, 1, (len(image), feature, feature)).astype(np.float32)

  return {"oracle, follows the sound": follows, "oracle, image only": image_only,
          "centre guess": centre, "random": random}


def score_all(config, split, source, offscreen, predict) -> dict:
  """`evaluators.extended_with_offscreen` of one map under the config's AP
  rule, plus `ap_slavc` / `max_f1_slavc` under SLAVC's code rule (the maps
  collected once)."""
  from soundloc_jax.evaluation import evaluators
  own, off = evaluators.collect_with_offscreen(config, split, source, offscreen, predict)
  metrics = evaluators.extended_with_offscreen(own, off, config.eval)
  ev = config.eval.copy_and_resolve_references()
  ev.extended.ap_rule = "slavc"
  slavc = evaluators.extended_with_offscreen(own, off, ev)
  return {**metrics, "ap_slavc": slavc["ap"], "max_f1_slavc": slavc["max_f1"]}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data_dir", required=True)
  p.add_argument("--name", default="stamps/px128", help="the stamps build (name/config)")
  p.add_argument("--draws", type=int, default=5, help="draws of the random map")
  args = p.parse_args(argv)
  import tensorflow_datasets as tfds

  from soundloc_jax import data
  from soundloc_jax.configs import iterative
  preset = "stamps128" if args.name.endswith("px128") else "stamps"
  config = iterative.get_config(preset)
  config.dataset.name, config.dataset.data_dir = args.name, args.data_dir
  config.eval.extended.probes = ("silence", "noise")
  builder = tfds.builder(args.name, data_dir=args.data_dir)
  fmt = builder.info.metadata["gt_format"]
  feature = int(config.dataset.image_size) // 16
  lines = []
  for split, off_split in OFFSCREEN_OF.items():
    source = data.open_source(args.name, split, args.data_dir)
    offscreen = data.open_source(args.name, off_split, args.data_dir)
    lines += [f"\n**{split} + {off_split}** (n = {len(source)} + {len(offscreen)})\n",
              "| map | " + " | ".join(c for c, _ in COLUMNS) + " |",
              "|" + "---|" * (len(COLUMNS) + 1)]
    maps = reference_maps(source, fmt, config.eval.size, int(config.dataset.image_size), feature,
                          np.random.default_rng(0))
    for name, predict in maps.items():
      draws = args.draws if name == "random" else 1
      runs = [score_all(config, split, source, offscreen, predict) for _ in range(draws)]
      cells = [f"{np.mean([r[k] for r in runs]):.3f}" for _, k in COLUMNS]
      label = f"{name} (mean of {draws})" if draws > 1 else name
      lines.append(f"| {label} | " + " | ".join(cells) + " |")
      print(lines[-1], flush=True)
  print("\n".join(lines))


if __name__ == "__main__":
  main()
