"""Where finished runs' maps peak, and which silent objects they prefer.

  python scripts/map_diagnostics.py WORKDIR [WORKDIR ...] [--split=test]

For each run (its latest checkpoint, its own config), on one annotated split:
- **Border**: the fraction of images whose raw `h x w` map peaks on the map's
  outer ring of cells, against the ring's share of cells and the fraction of
  sounding boxes whose centre of mass lies there. A map drawn to the image
  border peaks on the ring far more often than the boxes lie there (ICL's
  do on stamps, with zero or reflect padding: docs/results.md). Then
  the pointing game with the ring ignored (`interior_maps`: the peak taken
  among the inner cells only), with its 95% bootstrap interval: whether the
  inner cells point at the sounding object even where the ring wins. This is
  a diagnostic, not a score: it uses the knowledge that boxes rarely touch
  the border (the centre guess keeps its pointing under it). Last, whether
  the peak is merely the image's most typical patch: each patch's cosine
  with the image's mean feature phi(V) (`mean_feature_similarity`), on the
  ring against the inner cells, and how often the map's peak is the cell
  most similar to phi(V).
- **Silent-object test by kind** (splits with `silent_groups` whose
  dataset metadata lists `groups`, i.e. `stamps`): the test of
  `evaluation.objects.silent_object_scores`, one score per (image, silent
  object), grouped by the silent object's kind: a group seen sounding in
  training, an unseen group, or a group that never sounds. On `test_unseen`
  a model that learned its training groups rather than the link between a
  new sound and a new object prefers seen-group silent objects (< 0.5).
- **Does the sound choose the object** (splits with a `group` per example):
  the silent-object test with each image's own clip, then with the clip of
  a random image of another sounding group of the same split, and the
  paired difference, each with its 95% bootstrap interval. The maps here
  are the cosine of each patch feature with the audio embedding, the
  response of every method in this project (the script prints their
  correlation with the model's own maps as a check). A model whose maps
  follow the sound scores far lower with another group's clip (on stamps'
  `test`: ~0.93 against ~0.5); a difference near 0 means the image alone
  decides which object is hot. Then the test per sounding group, and the
  audio embeddings' mean cosine within a sounding group against across
  groups: whether the audio encoder still tells the split's sounds apart.
  With `--nearest_from=test`, for each sounding group of `--split` the
  groups of that other split whose mean audio embedding is nearest to its
  clips most often: on `test_unseen`, which seen sounds a new sound is
  taken for (kin, or an unrelated group).

Used for the readings of docs/results.md#real-media-benchmark-stamps.
"""

from __future__ import annotations

import argparse

import numpy as np


def ring_mask(h: int, w: int) -> np.ndarray:
  ring = np.zeros((h, w), bool)
  ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = True
  return ring


def interior_maps(maps: np.ndarray) -> np.ndarray:
  """`maps` [N, h, w] with each map's outer ring set 1 below its minimum, so
  its peak (resized or not) falls in the inner cells."""
  maps = np.array(maps, np.float32)
  ring = ring_mask(*maps.shape[1:])
  maps[:, ring] = maps.reshape(len(maps), -1).min(axis=1)[:, None] - 1.0
  return maps


def mean_feature_similarity(visual: np.ndarray) -> np.ndarray:
  """`[N, h, w]` cosine of each patch feature of `visual` [N, h, w, d] with
  its image's mean patch feature phi(V)."""
  v = np.asarray(visual, np.float64)
  mean = v.mean(axis=(1, 2))
  mean /= np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
  norms = np.maximum(np.linalg.norm(v, axis=-1), 1e-12)
  return np.einsum("nhwd,nd->nhw", v, mean) / norms


def box_cells(gt_maps: np.ndarray, h: int, w: int) -> np.ndarray:
  """`[N, 2]` (row, col) cell of each gt map's centre of mass on an h x w grid."""
  gt = np.asarray(gt_maps, np.float64)
  size_y, size_x = gt.shape[-2:]
  mass = gt.sum(axis=(1, 2))
  y = (gt.sum(axis=2) * np.arange(size_y)).sum(axis=1) / mass
  x = (gt.sum(axis=1) * np.arange(size_x)).sum(axis=1) / mass
  return np.stack([np.floor(y * h / size_y), np.floor(x * w / size_x)], axis=1).astype(int)


def silent_scores_by_kind(outputs, kinds: list[list[str]], size: int) -> dict:
  """`{kind: (mean, count)}` of the silent-object test per (image, silent
  object); `kinds[i][k]` names the kind of image i's k-th silent object (in
  the order of its `silent_boxes`)."""
  from soundloc_jax.evaluation import objects
  scores: dict = {}
  for k in range(outputs.silent_maps.shape[1]):
    rows = np.flatnonzero(outputs.silent_valid[:, k])
    if not rows.size:
      continue
    won = objects.silent_object_scores(outputs.responses[rows], outputs.gt_maps[rows],
                                       outputs.silent_maps[rows, k:k + 1],
                                       outputs.silent_valid[rows, k:k + 1], size=size)
    for i, score in zip(rows, won):
      scores.setdefault(kinds[i][k], []).append(score)
  return {kind: (float(np.mean(v)), len(v)) for kind, v in sorted(scores.items())}


def other_group_partners(groups, seed: int = 0) -> np.ndarray:
  """`[N]`: for each item, a random index of an item of another group."""
  groups = np.asarray(groups)
  rng = np.random.default_rng(seed)
  partners = np.empty(len(groups), int)
  for i, group in enumerate(groups):
    others = np.flatnonzero(groups != group)
    if not others.size:
      raise ValueError(f"every item is of group {group!r}: no other group's clip to pair with")
    partners[i] = rng.choice(others)
  return partners


def _unit(x) -> np.ndarray:
  """`x` in float64 with its last axis scaled to unit length."""
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine_maps(visual: np.ndarray, audio: np.ndarray) -> np.ndarray:
  """`[N, h, w]` cosine of each patch feature of `visual` [N, h, w, d] with
  the matching row of `audio` [N, d]."""
  return np.einsum("nhwd,nd->nhw", _unit(visual), _unit(audio))


def audio_swap_scores(outputs, groups, size: int, seed: int = 0):
  """`(own [N], other [N], correlation)`: the silent-object test per image
  with cosine maps from its own audio embedding and from that of a random
  image of another group (`other_group_partners`), and the correlation of
  the own-audio cosine maps with `outputs.responses`."""
  from soundloc_jax.evaluation import objects
  own_maps = cosine_maps(outputs.visual, outputs.audio)
  other_maps = cosine_maps(outputs.visual, outputs.audio[other_group_partners(groups, seed)])
  corr = float(np.corrcoef(own_maps.ravel(), np.asarray(outputs.responses).ravel())[0, 1])
  own, other = (objects.silent_object_scores(m, outputs.gt_maps, outputs.silent_maps,
                                             outputs.silent_valid, size=size)
                for m in (own_maps, other_maps))
  return own, other, corr


def means_by_group(values, groups) -> dict:
  """`{group: (mean, count)}` of per-item `values`."""
  values, groups = np.asarray(values, np.float64), np.asarray(groups)
  return {g: (float(values[groups == g].mean()), int((groups == g).sum()))
          for g in sorted(set(groups.tolist()))}


def group_cosines(audio, groups) -> tuple[float, float]:
  """Mean cosine of the embeddings in `audio` [N, d] over pairs of distinct
  items of the same group, and over pairs of different groups."""
  a = _unit(audio)
  sims, groups = a @ a.T, np.asarray(groups)
  same = groups[:, None] == groups[None]
  return float(sims[same & ~np.eye(len(a), dtype=bool)].mean()), float(sims[~same].mean())


def nearest_groups(audio, reference_audio, reference_groups) -> np.ndarray:
  """`[N]` for each row of `audio` [N, d], the group of `reference_groups`
  whose mean unit-normalised embedding in `reference_audio` [M, d] has the
  highest cosine with it."""
  ref, names = _unit(reference_audio), np.asarray(reference_groups)
  groups = sorted(set(names.tolist()))
  centroids = _unit(np.stack([ref[names == g].mean(axis=0) for g in groups]))
  return np.asarray(groups)[(_unit(audio) @ centroids.T).argmax(axis=1)]


def sounding_groups(source) -> list[str] | None:
  if "group" not in source.dataset_info.features:
    return None
  return [_text(source[i]["group"]) for i in range(len(source))]


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def silent_kinds(source) -> list[list[str]] | None:
  groups = (source.dataset_info.metadata or {}).get("groups")
  if not groups or "silent_groups" not in source.dataset_info.features:
    return None
  seen, unseen = set(groups["seen"]), set(groups["unseen"])
  kinds = []
  for i in range(len(source)):
    names = _text(source[i]["silent_groups"]).split("|")
    kinds.append(["seen" if g in seen else "unseen" if g in unseen else "never sounds"
                  for g in names if g])
  return kinds


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("workdirs", nargs="+")
  p.add_argument("--split", default="test")
  p.add_argument("--nearest_from", default="",
                 help="another split with sounding groups (e.g. test): name the groups of it "
                      "whose mean audio embedding is nearest to each group's clips")
  args = p.parse_args(argv)
  from soundloc_jax import data, inference, state as state_lib
  from soundloc_jax.evaluation import evaluators, protocol
  for workdir in args.workdirs:
    run = inference.load(workdir)
    config, step = run.config, run.step
    name, data_dir = data.prepare_data(config)
    predict = state_lib.make_predict_fn(run.graphdef, outputs="all")
    source = data.open_source(name, args.split, data_dir)
    outputs = evaluators.SplitEvaluator(args.split, source, config).collect(
        lambda im, sp: predict(run.params, run.batch_stats, im, sp), features=True)
    maps = outputs.responses
    n, h, w = maps.shape
    ring = ring_mask(h, w)
    flat_ring = ring.reshape(-1)
    peak_cells = maps.reshape(n, -1).argmax(axis=1)
    cells = box_cells(outputs.gt_maps, h, w)
    print(f"{workdir} (step {step}, {args.split}, n={n}, {h}x{w} maps): peak on the outer ring "
          f"{flat_ring[peak_cells].mean():.3f}; ring's share of cells {ring.mean():.3f}; "
          f"sounding box centres on it {ring[cells[:, 0], cells[:, 1]].mean():.3f}", flush=True)
    hits = protocol.pointing_hits(interior_maps(maps), outputs.gt_maps, size=config.eval.size)
    mean, lo, hi = protocol.mean_ci95(hits)
    print(f"  pointing with the outer ring ignored {mean:.3f} [{lo:.3f}, {hi:.3f}]", flush=True)
    typical = mean_feature_similarity(outputs.visual).reshape(n, -1)
    same = (typical.argmax(axis=1) == peak_cells).mean()
    print(f"  cosine with the image's mean feature: ring cells {typical[:, flat_ring].mean():.3f}"
          f", inner cells {typical[:, ~flat_ring].mean():.3f}; the map peaks on the most "
          f"typical cell in {same:.3f}", flush=True)
    kinds = silent_kinds(source) if outputs.silent_maps is not None else None
    if kinds is not None:
      by_kind = silent_scores_by_kind(outputs, kinds, config.eval.size)
      print("  silent-object test by the silent object's group: " + "; ".join(
          f"{kind} {mean:.3f} (n={count})" for kind, (mean, count) in by_kind.items()),
            flush=True)
    groups = sounding_groups(source) if outputs.silent_maps is not None else None
    if groups is not None:
      print_audio_swap(outputs, groups, config.eval.size)
      if args.nearest_from:
        reference = data.open_source(name, args.nearest_from, data_dir)
        ref_groups = sounding_groups(reference)
        if ref_groups is None:
          raise SystemExit(f"--nearest_from={args.nearest_from}: split {args.nearest_from!r} of "
                           f"{name} stores no 'group' per example")
        ref_outputs = evaluators.SplitEvaluator(args.nearest_from, reference, config).collect(
            lambda im, sp: predict(run.params, run.batch_stats, im, sp), features=True)
        print_nearest(outputs.audio, groups, ref_outputs.audio, ref_groups, args.nearest_from)


def print_audio_swap(outputs, groups, size: int) -> None:
  from soundloc_jax.evaluation import protocol
  own, other, corr = audio_swap_scores(outputs, groups, size)
  cells = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in
           map(protocol.mean_ci95, (own, other, own - other))]
  print(f"  silent-object test with the image's own clip {cells[0]}, with another sounding "
        f"group's clip {cells[1]}, own minus other {cells[2]} (cosine maps; their correlation "
        f"with the model's maps {corr:.3f})", flush=True)
  print("  silent-object test by sounding group: " + "; ".join(
      f"{g} {mean:.3f} (n={count})" for g, (mean, count) in
      means_by_group(own, groups).items()), flush=True)
  same, different = group_cosines(outputs.audio, groups)
  print(f"  audio embeddings' mean cosine: same sounding group {same:.3f}, different groups "
        f"{different:.3f}", flush=True)


def print_nearest(audio, groups, reference_audio, reference_groups, reference: str) -> None:
  nearest, groups = nearest_groups(audio, reference_audio, reference_groups), np.asarray(groups)
  parts = []
  for g in sorted(set(groups.tolist())):
    names, counts = np.unique(nearest[groups == g], return_counts=True)
    top = np.argsort(-counts, kind="stable")[:2]
    parts.append(f"{g} -> " + ", ".join(f"{names[i]} {counts[i]}" for i in top)
                 + f" (of {(groups == g).sum()})")
  print(f"  nearest {reference} group by mean audio embedding: " + "; ".join(parts), flush=True)


if __name__ == "__main__":
  main()
