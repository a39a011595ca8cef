"""HardPos mining command: `python -m soundloc_jax.mine --workdir=BASELINE_WORKDIR`.

Loads a trained baseline (the Vanilla-LVS run of `configs/lvs.py:,variant=vanilla`;
any workdir works) with `soundloc_jax.load` (its recorded config.json, the
latest checkpoint or `--checkpoint_step`), embeds every example of its
training split in eval mode (jitted, batched: the audio embedding and the
spatial average of the visual feature map, the vectors of Eq. 4), ranks all
examples per modality with `methods.mining.mine_neighbours` (exact blocked top-K,
self excluded, ties by position) and writes `BASELINE_WORKDIR/neighbours.npz`
(`methods.mining.save_neighbours`: ids in split order) plus `neighbours.json` (where
it came from, timings). K is `--num_neighbours` (default 1000, the paper's),
clipped to n - 1 with a warning on small data. Train HardPos on it with
`--config=configs/hard_positive.py --config.method.neighbours_path=BASELINE_WORKDIR/neighbours.npz`.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained baseline workdir (config.json + "
                               "checkpoints/).")
_STEP = flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step (default: latest).")
_K = flags.DEFINE_integer("num_neighbours", 1000, "K neighbours per example and modality.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Examples per embedding forward.")
_BLOCK = flags.DEFINE_integer("block_size", 1024, "Queries per top-k block (memory: "
                              "block_size x n float32 scores).")
_OUT = flags.DEFINE_string("out", "", "Output .npz (default: WORKDIR/neighbours.npz).")
flags.mark_flags_as_required(["workdir"])


def embed_split(localizer, source, *, batch_size: int, num_threads: int = 0, log=print):
  """`(ids [n], audio [n, d], visual [n, d])` of every example of `source`, in order."""
  import numpy as np
  from soundloc_jax import input_pipeline, state, workdir
  n = len(source)
  # The mean of the (per-patch L2-normalised) visual map, re-normalised by
  # `mining.mine_neighbours`, and the audio embedding: the vectors of Eq. 4.
  embed = state.make_predict_fn(localizer.graphdef, outputs="embeddings")
  ids, audio, visual = [], [], []
  t0, last_log, done = time.time(), 0.0, 0
  for batch in input_pipeline.eval_batches(source, batch_size=batch_size,
                                           image_size=localizer.image_size,
                                           num_threads=num_threads):
    a, v = embed(localizer.params, localizer.batch_stats, batch["image"], batch["spectrogram"])
    valid = np.asarray(batch["valid"])
    ids.extend(np.asarray(batch["id"])[valid].tolist())
    audio.append(np.asarray(a)[valid])
    visual.append(np.asarray(v)[valid])
    done += int(valid.sum())
    now = time.time()
    if now - last_log > 10 or done == n:
      rate = done / max(now - t0, 1e-9)
      eta = workdir.format_eta((n - done) / rate)
      log(f"embedded {done}/{n} examples, {rate:.0f}/s, ETA {eta}")
      last_log = now
  ids = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
  return ids, np.concatenate(audio), np.concatenate(visual)


def mine(workdir: str, *, step: int | None = None, num_neighbours: int = 1000,
         batch_size: int = 256, block_size: int = 1024, out: str = "", log=print) -> str:
  """Embeds the baseline's training split, mines, writes the file; returns its path."""
  from soundloc_jax import data, inference
  from soundloc_jax.errors import ConfigError
  from soundloc_jax.methods import mining
  if num_neighbours < 1:
    raise ConfigError(f"--num_neighbours must be >= 1, got {num_neighbours}")
  if out and not out.endswith(".npz"):
    raise ConfigError(f"--out must name a .npz file, got {out!r}")
  localizer = inference.load(workdir, step)
  config = localizer.config
  name, data_dir = data.prepare_data(config)
  split = config.dataset.train_split
  source = data.open_source(name, split, data_dir)
  n = len(source)
  if n < 2:
    raise ConfigError(f"training split {name}:{split} has {n} example(s); mining needs >= 2")
  k = num_neighbours
  if k > n - 1:
    print(f"warning: --num_neighbours={k} but {name}:{split} has {n} examples; using {n - 1}",
          file=sys.stderr, flush=True)
    k = n - 1
  log(f"Mining {k} neighbours per example of {name}:{split} ({n} examples) with checkpoint "
      f"step {localizer.step} of {localizer.workdir} (method "
      f"{config.get('method', {}).get('name')!r})")
  t0 = time.time()
  ids, audio, visual = embed_split(localizer, source, batch_size=batch_size,
                                   num_threads=config.dataset.num_workers, log=log)
  t_embed = time.time() - t0
  t1 = time.time()
  result = mining.mine_neighbours(ids, audio, visual, k, block_size=block_size)
  t_mine = time.time() - t1
  log(f"top-{k} in both modalities: {t_mine:.1f} s")
  path = os.path.abspath(out or os.path.join(localizer.workdir, "neighbours.npz"))
  mining.save_neighbours(path, result)
  record = {"neighbours_file": path, "workdir": localizer.workdir, "checkpoint_step": localizer.step,
            "dataset": name, "split": split, "num_examples": n, "k": k,
            "embedding_dim": int(audio.shape[1]), "embed_seconds": round(t_embed, 2),
            "mine_seconds": round(t_mine, 2), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
  with open(path[:-4] + ".json", "w") as f:
    json.dump(record, f, indent=1)
  log(f"wrote {path} (embedding {t_embed:.1f} s, mining {t_mine:.1f} s)")
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from absl import logging
  from soundloc_jax import distributed
  from soundloc_jax.errors import UserError
  logging.set_verbosity(logging.WARNING)
  distributed.enable_compilation_cache()
  try:
    mine(_WORKDIR.value, step=_STEP.value, num_neighbours=_K.value, batch_size=_BATCH.value,
         block_size=_BLOCK.value, out=_OUT.value, log=lambda s: print(s, flush=True))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
  from soundloc_jax.errors import help_is_not_an_error
  with help_is_not_an_error(argv):
    return app.parse_flags_with_usage(argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
