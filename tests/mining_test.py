"""Tests of soundloc_jax.mining against a brute-force NumPy ranking.

Reference: for each query row, all scores in float64, the query itself
removed, then `np.argsort(-score, kind="stable")[:k]`: score descending, ties
by the smaller index. Exactness tests use dyadic embeddings (small integers /
16, d = 16) whose dot products are exact in float32 and float64 whatever the
summation order, so exact ties (duplicated rows, and many incidental ones)
have one right answer that the blocked JAX code must reproduce bit for bit.
"""

import numpy as np
import pytest

from soundloc_jax.methods import mining

N, D, K = 300, 16, 10


def brute_force(emb, k, exclude_self=True):
  emb = np.asarray(emb, np.float64)
  n = emb.shape[0]
  indices = np.empty((n, k), np.int64)
  scores = np.empty((n, k), np.float64)
  for i in range(n):
    row = emb @ emb[i]
    candidates = np.array([j for j in range(n) if not (exclude_self and j == i)])
    order = np.argsort(-row[candidates], kind="stable")[:k]
    indices[i] = candidates[order]
    scores[i] = row[indices[i]]
  return indices, scores


def dyadic_embeddings(seed, n=N, d=D, duplicates=40):
  """Small-integer / 16 entries; `duplicates` rows copy earlier (and later) rows."""
  rng = np.random.default_rng(seed)
  emb = rng.integers(-3, 4, size=(n, d)).astype(np.float32) / 16.0
  for _ in range(duplicates):
    src, dst = rng.choice(n, size=2, replace=False)
    emb[dst] = emb[src]
  return emb


@pytest.mark.parametrize("block_size", [300, 100, 64, 7, 1024])
def test_exact_match_with_ties(block_size):
  emb = dyadic_embeddings(0)
  ref_idx, ref_scores = brute_force(emb, K + 1)
  # The data really has ties inside the top k and across the cut at k.
  assert any(len(set(r[:K])) < K for r in ref_scores)
  assert np.sum(ref_scores[:, K - 1] == ref_scores[:, K]) > 10
  ref_idx, ref_scores = ref_idx[:, :K], ref_scores[:, :K]
  idx, scores = mining.topk_neighbours(emb, K, block_size=block_size)
  assert idx.dtype == np.int32 and idx.shape == (N, K) and scores.shape == (N, K)
  np.testing.assert_array_equal(idx, ref_idx)
  np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


def test_all_rows_identical():
  """Every score ties: neighbours are simply the other rows in index order."""
  emb = np.tile(dyadic_embeddings(1, n=1, duplicates=0), (50, 1))
  idx, _ = mining.topk_neighbours(emb, 49, block_size=16)
  for i in range(50):
    assert idx[i].tolist() == [j for j in range(50) if j != i]


@pytest.mark.parametrize("k", [N - 1, N - 2])
def test_k_near_n(k):
  emb = dyadic_embeddings(2)
  ref_idx, _ = brute_force(emb, k)
  idx, _ = mining.topk_neighbours(emb, k, block_size=128)
  np.testing.assert_array_equal(idx, ref_idx)
  for i in range(N):
    assert i not in idx[i]


def test_keep_self():
  emb = dyadic_embeddings(3)
  ref_idx, _ = brute_force(emb, N, exclude_self=False)
  idx, _ = mining.topk_neighbours(emb, N, block_size=64, exclude_self=False)
  np.testing.assert_array_equal(idx, ref_idx)


def test_random_normalised_embeddings():
  """Generic floats: float32 vs float64 rounding may swap near-ties, so compare scores."""
  rng = np.random.default_rng(4)
  emb = rng.normal(size=(N, D)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  _, ref_scores = brute_force(emb, K)
  idx, scores = mining.topk_neighbours(emb, K, block_size=128)
  np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
  exact = np.einsum("nd,nkd->nk", emb.astype(np.float64), emb.astype(np.float64)[idx])
  np.testing.assert_allclose(scores, exact, atol=1e-6)
  assert np.all(np.diff(scores, axis=1) <= 0)
  assert all(i not in idx[i] for i in range(N))


def test_bad_k():
  emb = dyadic_embeddings(5, n=10, duplicates=0)
  for k in (0, 10):
    with pytest.raises(ValueError, match="k="):
      mining.topk_neighbours(emb, k)


def test_mine_save_load_round_trip(tmp_path):
  rng = np.random.default_rng(6)
  ids = [f"vid_{i:04d}_{'x' * (i % 5)}" for i in range(N)]
  audio = dyadic_embeddings(7)
  visual_maps = rng.normal(size=(N, 2, 3, D)).astype(np.float32)
  result = mining.mine_neighbours(ids, audio, visual_maps, K, block_size=128)

  normalised_audio = audio / np.linalg.norm(audio, axis=1, keepdims=True)
  pooled = visual_maps.mean(axis=(1, 2))
  pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
  # Normalising makes the scores inexact, so near-ties may swap: compare scores.
  _, ref_audio_scores = brute_force(normalised_audio, K)
  np.testing.assert_allclose(result["audio_scores"], ref_audio_scores, atol=1e-6)
  _, ref_visual_scores = brute_force(pooled, K)
  np.testing.assert_allclose(result["visual_scores"], ref_visual_scores, atol=1e-6)

  path = tmp_path / "neighbours.npz"
  mining.save_neighbours(path, result)
  loaded = mining.load_neighbours(path)
  assert loaded["k"] == K and loaded["format_version"] == mining.FORMAT_VERSION
  assert loaded["ids"].tolist() == ids
  for name in mining.MODALITIES:
    np.testing.assert_array_equal(loaded[f"{name}_indices"], result[f"{name}_indices"])
    np.testing.assert_array_equal(loaded[f"{name}_scores"], result[f"{name}_scores"])
    got = mining.neighbour_ids(loaded, name)
    assert got.shape == (N, K)
    assert got[5].tolist() == [ids[j] for j in result[f"{name}_indices"][5]]
    assert ids[5] not in got[5].tolist()
  assert mining.neighbour_ids(loaded, "audio", rows=[3, 1]).tolist() == \
      [[ids[j] for j in result["audio_indices"][r]] for r in (3, 1)]


def test_mine_rejects_bad_inputs():
  emb = dyadic_embeddings(8, n=20, duplicates=0)
  with pytest.raises(ValueError, match="unique"):
    mining.mine_neighbours(["a"] * 20, emb, emb, 3)
  with pytest.raises(ValueError, match="ids"):
    mining.mine_neighbours([str(i) for i in range(19)], emb, emb, 3)
