"""Top-K neighbour mining for HardPos (Senocak et al., Eq. 4).

HardPos embeds every training sample with a baseline trained WITHOUT the
tri-map (Vanilla-LVS), then takes, per sample, its K = 1000 most similar
samples by cosine similarity in two spaces: the audio embeddings A_i and the
spatially average-pooled visual feature maps V_i. Those become the hard
positives P_iA, P_iV of Eq. 5; every other sample stays a negative.

`topk_neighbours` ranks by dot product, which is cosine similarity for
L2-normalised rows (`mine_neighbours` normalises). It never forms the n x n
score matrix: one jitted function scores a block of `block_size` queries
against all n keys and keeps the top k, so peak memory is about
block_size * n float32 scores (1024 x 144k = 0.6 GB for VGGSound-144k) plus
the [n, d] keys; the last block is zero-padded to the same shape (one
compile). Order is exact and platform-independent: score descending, ties by
the smaller key index, and the self match excluded (its score set to -inf).
`lax.top_k` only supplies the k-th value; which tied elements make the cut
and their order are resolved explicitly, so nothing relies on how a backend's
top_k orders equal values. Embeddings must be finite.

Saved format (`save_neighbours`, an uncompressed .npz, no pickles):
  format_version  int, 1
  ids             [n] unicode: the sample ids, in row order
  k               int
  audio_indices, visual_indices   [n, k] int32 rows into `ids`
  audio_scores,  visual_scores    [n, k] float32 cosine similarities
Row r's neighbours are `ids[audio_indices[r]]`: positions are only meaningful
together with the `ids` array stored beside them, so the file names
neighbours by id whatever order a data pipeline later reads samples in. (The
[n, k] id strings themselves would be ~10 GB for 144k x 1000, so they are
materialised on demand by `neighbour_ids`.)
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

FORMAT_VERSION = 1
MODALITIES = ("audio", "visual")
MAX_ROWS = 2**23  # ranking keys up to 2n must be exact in float32


@functools.partial(jax.jit, static_argnames=("k", "exclude_self"))
def _block_topk(queries, keys, start, *, k, exclude_self):
  """Top-k of `queries [b, d] @ keys [n, d]^T` per row, exact tie order.

  `start` is the global index of the first query (for the self mask).
  """
  n = keys.shape[0]
  scores = jnp.einsum("bd,nd->bn", queries, keys, precision=jax.lax.Precision.HIGHEST)
  scores = scores.astype(jnp.float32) + 0.0  # + 0.0 turns -0.0 into 0.0
  key_index = jnp.arange(n, dtype=jnp.int32)
  if exclude_self:
    query_index = start + jnp.arange(queries.shape[0], dtype=jnp.int32)
    scores = jnp.where(key_index[None, :] == query_index[:, None], -jnp.inf, scores)
  # 1. The k-th largest value is exact whatever top_k does with ties. (It is
  # taken as the min of the top k: slicing column k-1 instead made XLA CPU
  # fall back from its top_k kernel to a full sort, 10x slower.)
  kth = jnp.min(jax.lax.top_k(scores, k)[0], axis=1, keepdims=True)
  # 2. The k picks are everything above it, then the lowest-index elements
  # equal to it. One more top_k finds them: keys 2n - index (above) and
  # n - index (tied) are unique, exact in float32 below 2**24, and rank
  # every "above" element before every tied one. (Float keys: integer top_k
  # has no fast CPU path; a cumsum over the ties was quadratic once fused.)
  above = scores > kth
  tied = scores == kth
  rank_key = jnp.where(above, 2 * n - key_index, jnp.where(tied, n - key_index, 0))
  picked = jax.lax.top_k(rank_key.astype(jnp.float32), k)[1]
  picked_scores = jnp.take_along_axis(scores, picked, axis=1)
  # 3. Final order: score descending, then index ascending.
  neg_scores, indices = jax.lax.sort((-picked_scores, picked), dimension=1, num_keys=2)
  return indices, -neg_scores


def topk_neighbours(embeddings, k: int, *, block_size: int = 1024, exclude_self: bool = True):
  """Per row of `embeddings` [n, d], the k most similar rows (module docstring).

  Returns `(indices int32 [n, k], scores float32 [n, k])` as NumPy arrays.
  """
  keys = jnp.asarray(embeddings, dtype=jnp.float32)
  if keys.ndim != 2:
    raise ValueError(f"topk_neighbours: embeddings must be [n, d], got {keys.shape}")
  n = keys.shape[0]
  if n >= MAX_ROWS:
    raise ValueError(f"topk_neighbours: n={n} rows; at most {MAX_ROWS - 1} supported")
  limit = n - 1 if exclude_self else n
  if not 1 <= k <= limit:
    raise ValueError(f"topk_neighbours: k={k} must be in [1, {limit}] for n={n} "
                     f"(exclude_self={exclude_self})")
  block_size = max(1, min(block_size, n))
  indices = np.empty((n, k), np.int32)
  scores = np.empty((n, k), np.float32)
  for start in range(0, n, block_size):
    stop = min(start + block_size, n)
    queries = keys[start:stop]
    if stop - start < block_size:  # pad the last block: one compiled shape
      queries = jnp.pad(queries, ((0, block_size - (stop - start)), (0, 0)))
    block_indices, block_scores = _block_topk(queries, keys, jnp.int32(start), k=k,
                                              exclude_self=exclude_self)
    indices[start:stop] = np.asarray(block_indices)[:stop - start]
    scores[start:stop] = np.asarray(block_scores)[:stop - start]
  return indices, scores


def _l2_normalize(x):
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def mine_neighbours(ids, audio_emb, visual_emb, k: int, *, block_size: int = 1024) -> dict:
  """HardPos Eq. 4 for both modalities.

  `audio_emb` [n, d] audio embeddings; `visual_emb` [n, d] average-pooled
  visual embeddings, or [n, h, w, d] feature maps (pooled here). Both are
  L2-normalised here, so scores are cosine similarities. Returns the dict
  `save_neighbours` writes (module docstring); use `neighbour_ids` for ids.
  """
  ids = np.asarray([str(i) for i in ids])
  audio = np.asarray(audio_emb, np.float32)
  visual = np.asarray(visual_emb, np.float32)
  if visual.ndim == 4:
    visual = visual.mean(axis=(1, 2))
  if audio.ndim != 2 or visual.ndim != 2:
    raise ValueError(f"mine_neighbours: expected [n, d] embeddings, got audio {audio.shape}, "
                     f"visual {visual.shape}")
  if not len(ids) == audio.shape[0] == visual.shape[0]:
    raise ValueError(f"mine_neighbours: {len(ids)} ids, {audio.shape[0]} audio and "
                     f"{visual.shape[0]} visual embeddings")
  if len(set(ids.tolist())) != len(ids):
    raise ValueError("mine_neighbours: ids are not unique")
  result = {"format_version": FORMAT_VERSION, "ids": ids, "k": int(k)}
  for name, emb in (("audio", audio), ("visual", visual)):
    indices, scores = topk_neighbours(_l2_normalize(emb), k, block_size=block_size)
    result[f"{name}_indices"] = indices
    result[f"{name}_scores"] = scores
  return result


def neighbour_ids(result: dict, modality: str, rows=None) -> np.ndarray:
  """Neighbour ids `[len(rows), k]` (all rows by default) for 'audio' or 'visual'."""
  if modality not in MODALITIES:
    raise ValueError(f"neighbour_ids: modality {modality!r} not in {MODALITIES}")
  indices = result[f"{modality}_indices"]
  if rows is not None:
    indices = indices[rows]
  return result["ids"][indices]


def save_neighbours(path, result: dict) -> None:
  """Writes `result` (from `mine_neighbours`) as the documented .npz, atomically."""
  path = os.fspath(path)
  if not path.endswith(".npz"):
    raise ValueError(f"save_neighbours: path must end in .npz, got {path!r}")
  tmp = path[:-4] + ".tmp.npz"
  arrays = {"format_version": np.int64(FORMAT_VERSION), "ids": np.asarray(result["ids"], str),
            "k": np.int64(result["k"])}
  for name in MODALITIES:
    arrays[f"{name}_indices"] = np.asarray(result[f"{name}_indices"], np.int32)
    arrays[f"{name}_scores"] = np.asarray(result[f"{name}_scores"], np.float32)
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def load_neighbours(path) -> dict:
  """Reads a file written by `save_neighbours` (checks version and shapes)."""
  with np.load(os.fspath(path), allow_pickle=False) as data:
    result = {key: data[key] for key in data.files}
  version = int(result.get("format_version", -1))
  if version != FORMAT_VERSION:
    raise ValueError(f"load_neighbours: {path}: format_version {version}, expected {FORMAT_VERSION}")
  result["format_version"] = version
  result["k"] = int(result["k"])
  n = len(result["ids"])
  for name in MODALITIES:
    for field in ("indices", "scores"):
      shape = result[f"{name}_{field}"].shape
      if shape != (n, result["k"]):
        raise ValueError(f"load_neighbours: {path}: {name}_{field} has shape {shape}, "
                         f"expected {(n, result['k'])}")
  return result
