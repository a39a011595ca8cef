"""What a trained HardPos run learned, on the av_digits demo (README, "Which
term stops HardPos").

  python scripts/hardpos_diagnostics.py WORKDIR [WORKDIR ...]
  TRAIN_MODE=1 python scripts/hardpos_diagnostics.py ...   # BatchNorm on batch statistics

For each HardPos workdir: 8 training batches of 64 with its own neighbour
table (seed 123, no augmentation) through the final checkpoint; prints the
mean of the four positive responses (P_b, P_a, P_v, P_c, whatever
`method.positives` trained) and of the masked negatives, how often each map
(base audio, audio neighbour, both with the base image) peaks on the
sounding digit's cell (2x2 cells; the demo's `present`/`label` features),
and the cosine between a base audio and its audio neighbour against the
cosine between base audios of the batch (same sounding class vs mostly
others).
"""
import sys
import numpy as np
import jax.numpy as jnp
import soundloc_jax
from soundloc_jax import input_pipeline, neighbours, train, hardpos_losses

for workdir in sys.argv[1:]:
  loc = soundloc_jax.load(workdir)
  cfg = loc.config
  name, data_dir = train.prepare_data(cfg)
  source = input_pipeline.open_source(name, "train", data_dir)
  table = neighbours.from_config(cfg.method, source, cfg.seed)
  it, _ = input_pipeline.train_iterator(source, global_batch=64, seed=123, start_step=0,
                                        num_steps=8, image_size=cfg.dataset.image_size,
                                        augment=False, neighbours=table)
  import os
  from flax import nnx
  if os.environ.get("TRAIN_MODE"):
    def full(params, batch_stats, im, sp):
      model = nnx.merge(loc.graphdef, params, batch_stats)
      model.train()
      return model(jnp.asarray(im), jnp.asarray(sp))
  else:
    full = train.make_predict_fn(loc.graphdef, outputs="all")
  pos_all, neg_all, cells, cos_aa, cos_other = [], [], [], [], []
  for batch in it:
    b = batch["image"].shape[0]
    im = batch["image"].reshape((-1,) + batch["image"].shape[2:])
    sp = batch["spectrogram"].reshape((-1,) + batch["spectrogram"].shape[2:])
    out = full(loc.params, loc.batch_stats, im, sp)
    v = np.asarray(out["visual_features"], np.float32).reshape((b, 2) + out["visual_features"].shape[1:])
    a = np.asarray(out["audio_embedding"], np.float32).reshape(b, 2, -1)
    pos = np.asarray(hardpos_losses.positive_responses(jnp.asarray(v), jnp.asarray(a)))
    neg = np.asarray(hardpos_losses.negative_scores(jnp.asarray(v), jnp.asarray(a), pooling="masked"))
    mask = batch["negative_mask"]
    pos_all.append(pos); neg_all.append(neg[mask])
    idx = batch["index"]; nidx = batch["neighbour_index"]
    for r in range(b):
      ex = source[int(idx[r])]
      present, label = np.asarray(ex["present"]), int(ex["label"])
      sounding = int(np.where(present == label)[0][0])
      def peak_cell(audio, image):
        m = np.einsum("hwd,d->hw", image, audio)
        c = m.reshape(2, 2, 2, 2).sum(axis=(1, 3))  # [cell row, cell col]
        return int(np.argmax(c))
      aj_label = int(source[int(nidx[r, 0])]["label"])
      cells.append((peak_cell(a[r, 0], v[r, 0]) == sounding, peak_cell(a[r, 1], v[r, 0]) == sounding,
                    aj_label == label))
      cos_aa.append(float(a[r, 0] @ a[r, 1]))
    # audio-audio cosine to other rows' base audio (mostly other classes)
    g = a[:, 0] @ a[:, 0].T
    cos_other.append(g[~np.eye(b, dtype=bool)].mean())
  pos = np.concatenate(pos_all); neg = np.concatenate(neg_all); cells = np.asarray(cells)
  print(f"== {workdir} (method.positives={cfg.method.get('positives', 'bavc')})")
  print("  mean P_b %.3f P_a %.3f P_v %.3f P_c %.3f | negatives %.3f" % (*pos.mean(0), neg.mean()))
  print("  rows with P_a > P_b: %.2f; P_v > P_b: %.2f" % ((pos[:, 1] > pos[:, 0]).mean(), (pos[:, 2] > pos[:, 0]).mean()))
  print("  peak on sounding cell: base audio %.2f, audio neighbour %.2f (chance ~0.25-0.5); neighbour same class %.2f"
        % tuple(cells.mean(0)))
  print("  cos(A_i, A_j) %.3f vs cos(A_i, other rows' audio) %.3f" % (np.mean(cos_aa), np.mean(cos_other)))
