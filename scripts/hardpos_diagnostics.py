"""What a trained HardPos run learned, on the av_digits demo
(docs/notes/2026-11-28-hardpos-on-the-demo.md, "What the trained models hold").

  python scripts/hardpos_diagnostics.py WORKDIR [WORKDIR ...]
  TRAIN_MODE=1 python scripts/hardpos_diagnostics.py ...   # BatchNorm on batch statistics
  python scripts/hardpos_diagnostics.py --purity BASELINE_WORKDIR K  # its mined neighbours.npz

`--purity`: how often a mined neighbour of the demo's training split is a
right positive: the audio neighbour's sounding class equals the base's
(what P_a needs), the visual neighbour's sounding class equals the base's,
and the visual neighbour's image holds a digit of the base's sounding class
at all (what P_v and P_c need: the base audio's object in that image),
each against K random neighbours (seed 0).

For each HardPos workdir: 8 training batches of 64 with its own neighbour
table (seed 123, no augmentation) through the final checkpoint; prints the
mean of the four positive responses (P_b, P_a, P_v, P_c, whatever
`method.positives` trained) and of the masked negatives, how often each map
(base audio, audio neighbour, both with the base image) peaks on the
sounding digit's cell (2x2 cells; the demo's `present`/`label` features),
the cosine between a base audio and its audio neighbour against the
cosine between base audios of the batch (same sounding class vs mostly
others), and the per-audio level shortcut (`hardpos_losses.level_diagnostics`,
docs: the HardPos anchor study): the spread of the audios' overall response
levels, how much of P_a - P_b the level gap explains, and the loss with each
audio's level removed against the chance loss. A run that learned by the
shortcut shows a growing spread, a correlation near 1 and a levelled loss at
chance. Any HardPos or Random HP workdir can be checked.
"""
import os
import sys

import jax.numpy as jnp
import numpy as np
from flax import nnx

import soundloc_jax
from soundloc_jax import data, input_pipeline, methods, state
from soundloc_jax.methods import hardpos as hardpos_losses
from soundloc_jax.methods import neighbours


def peak_cells(audio, images):
  """Row-major 2x2 cell of each [4, 4] map (<image patch, audio>) with the
  largest summed response: audio [B, d], images [B, 4, 4, d] -> [B]."""
  maps = np.einsum("bhwd,bd->bhw", images, audio)
  return maps.reshape(-1, 2, 2, 2, 2).sum(axis=(2, 4)).reshape(-1, 4).argmax(axis=1)


def forward_fn(loc):
  if not os.environ.get("TRAIN_MODE"):
    return state.make_predict_fn(loc.graphdef, outputs="all")

  def forward(params, batch_stats, image, spectrogram):
    model = nnx.merge(loc.graphdef, params, batch_stats)
    model.train()
    return model(jnp.asarray(image), jnp.asarray(spectrogram))
  return forward


def main(workdirs):
  for workdir in workdirs:
    loc = soundloc_jax.load(workdir)
    cfg = loc.config
    method = methods.get(cfg.method.name)
    name, data_dir = data.prepare_data(cfg)
    source = data.open_source(name, "train", data_dir)
    table = neighbours.from_config(cfg.method, source, cfg.seed)
    it, _ = input_pipeline.train_iterator(source, global_batch=64, seed=123, start_step=0,
                                          num_steps=8, image_size=cfg.dataset.image_size,
                                          augment=False, neighbours=table)
    forward = forward_fn(loc)
    pooling = cfg.method.negative_pooling
    rows = hardpos_losses.contrastive_rows(cfg.method.negative_anchor, cfg.method.positives)
    pos_all, neg_all, hits, cos_aa, cos_other, levels = [], [], [], [], [], []
    for batch in it:
      b = batch["image"].shape[0]
      inputs = state.model_inputs(batch, method.needs_neighbours)
      out = forward(loc.params, loc.batch_stats, *inputs)
      v = np.asarray(out["visual_features"], np.float32)
      v = v.reshape((b, 2) + v.shape[1:])
      a = np.asarray(out["audio_embedding"], np.float32).reshape(b, 2, -1)
      pos = hardpos_losses.positive_responses(jnp.asarray(v), jnp.asarray(a))
      pos_all.append(np.asarray(pos))
      negs = hardpos_losses.negative_scores(jnp.asarray(v), jnp.asarray(a),
                                            ("audio", "image", "neighbour_audio"), pooling=pooling)
      neg_all.append(np.asarray(negs["audio"])[batch["negative_mask"]])
      levels.append({k: float(x) for k, x in hardpos_losses.level_diagnostics(
          pos, negs, batch["negative_mask"], rows, cfg.method.temperature).items()})
      base = [source[int(i)] for i in batch["index"]]
      labels = np.asarray([int(ex["label"]) for ex in base])
      sounding = np.asarray([int(np.argmax(np.asarray(ex["present"]) == int(ex["label"])))
                             for ex in base])
      neighbour_labels = np.asarray([int(source[int(j)]["label"])
                                     for j in batch["neighbour_index"][:, 0]])
      hits.append(np.stack([peak_cells(a[:, 0], v[:, 0]) == sounding,
                            peak_cells(a[:, 1], v[:, 0]) == sounding,
                            neighbour_labels == labels], axis=1))
      cos_aa.append(np.sum(a[:, 0] * a[:, 1], axis=1))
      # Base audio against the other rows' base audio (mostly other classes).
      gram = a[:, 0] @ a[:, 0].T
      cos_other.append(gram[~np.eye(b, dtype=bool)].mean())
    pos, neg, hits = np.concatenate(pos_all), np.concatenate(neg_all), np.concatenate(hits)
    print(f"== {workdir} (method.positives={cfg.method.positives}, "
          f"negative_anchor={cfg.method.negative_anchor}, "
          f"negative_pooling={pooling})")
    print("  mean P_b %.3f P_a %.3f P_v %.3f P_c %.3f | negatives (A_i, V_l) %.3f" % (*pos.mean(0), neg.mean()))
    print("  rows with P_a > P_b: %.2f; P_v > P_b: %.2f"
          % ((pos[:, 1] > pos[:, 0]).mean(), (pos[:, 2] > pos[:, 0]).mean()))
    print("  peak on sounding cell: base audio %.2f, audio neighbour %.2f (chance ~0.25-0.5); "
          "neighbour same class %.2f" % tuple(hits.mean(0)))
    print("  cos(A_i, A_j) %.3f vs cos(A_i, other rows' audio) %.3f"
          % (np.mean(np.concatenate(cos_aa)), np.mean(cos_other)))
    mean = {k: np.mean([d[k] for d in levels]) for k in levels[0]}
    print("  per-audio levels: spread %.3f, corr(P_a - P_b, level gap) %.2f; loss %.3f, "
          "with levels removed %.3f, chance %.3f" % (
              mean["level_spread"], mean["level_corr"], mean["loss"],
              mean["loss_without_levels"], mean["loss_chance"]))


def neighbour_purity(baseline: str, k: int) -> None:
  """Prints the `--purity` fractions (module docstring) of the first k
  columns of `baseline/neighbours.npz`, and of k random neighbours per example."""
  from soundloc_jax import workdir as workdir_lib
  path = os.path.join(baseline, "neighbours.npz")
  mined = np.load(path)
  name, data_dir = data.prepare_data(workdir_lib.read_config(baseline))
  # Only ids and labels are read: an encoded image stays its bytes.
  source = data.open_source(name, "train", data_dir, encoded_images=True)
  examples = [source[i] for i in range(len(source))]
  ids = [e["id"].decode() if isinstance(e["id"], bytes) else str(e["id"]) for e in examples]
  if ids != list(mined["ids"]):
    raise SystemExit(f"{path}: its ids are not the training split's, in order")
  label = np.asarray([int(e["label"]) for e in examples])
  present = np.stack([np.asarray(e["present"]) for e in examples])  # [N, cells]
  random = np.random.default_rng(0).integers(0, len(label), size=(len(label), k))
  for kind, table in (("mined", None), ("random", random)):
    a = mined["audio_indices"][:, :k] if table is None else table
    v = mined["visual_indices"][:, :k] if table is None else table
    holds = (present[v] == label[:, None, None]).any(axis=-1)
    print(f"{kind:6s} K={k}: audio neighbour same sounding class "
          f"{np.mean(label[a] == label[:, None]):.3f}; visual neighbour same sounding class "
          f"{np.mean(label[v] == label[:, None]):.3f}, holds the base's sounding class "
          f"{np.mean(holds):.3f}")


if __name__ == "__main__":
  if sys.argv[1:2] == ["--purity"]:
    neighbour_purity(sys.argv[2], int(sys.argv[3]))
  else:
    main(sys.argv[1:])
