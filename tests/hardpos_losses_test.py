"""hardpos_losses vs a slow float64 reference written straight from Eq. 2, 3, 5, 6
(and the soft-masked negatives of LVS's code, `negative_pooling="masked"`).

The reference loops over rows and patches in NumPy float64, forms each soft
mask and each ratio <m, alpha>/|m| literally, sums exp() of the positives and
of the masked-in negatives, and takes -mean log(P / (P + N)).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soundloc_jax.methods import hardpos as hardpos_losses

EPS, MASK_TAU, TEMP = 0.65, 0.03, 0.07


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def _alpha(audio, image):
  """Eq. 2 for L2-normalised inputs: [h, w] cosine map, as nested Python floats."""
  h, w, _ = image.shape
  return [[float(np.dot(audio, image[u, v])) for v in range(w)] for u in range(h)]


def _masked(alpha, epsilon, mask_tau):
  num = den = 0.0
  for row in alpha:
    for value in row:
      m = _sigmoid((value - epsilon) / mask_tau)
      num += m * value
      den += m
  return num / den


def _mean(alpha):
  values = [v for row in alpha for v in row]
  return sum(values) / len(values)


def reference_loss(visual, audio, negative_mask, epsilon=EPS, mask_tau=MASK_TAU, temperature=TEMP,
                   negative_pooling="mean", positives="bavc", negative_anchor="audio"):
  """Per row i, per anchored row: sum exp of its positives, sum exp of its
  negatives, -log(P / (P + N)); "both" averages the rows that hold a positive."""
  visual = np.asarray(visual, np.float64)
  audio = np.asarray(audio, np.float64)
  batch = visual.shape[0]

  def pooled(alpha):
    return _mean(alpha) if negative_pooling == "mean" else _masked(alpha, epsilon, mask_tau)

  total = 0.0
  for i in range(batch):
    base_audio, neighbour_audio = audio[i, 0], audio[i, 1]  # A_i, A_j
    base_image, neighbour_image = visual[i, 0], visual[i, 1]  # V_i, V_k
    p_b = _masked(_alpha(base_audio, base_image), epsilon, mask_tau)
    p_a = _masked(_alpha(neighbour_audio, base_image), epsilon, mask_tau)
    p_v = _masked(_alpha(base_audio, neighbour_image), epsilon, mask_tau)
    p_c = _masked(_alpha(neighbour_audio, neighbour_image), epsilon, mask_tau)
    terms = {"b": p_b, "a": p_a, "v": p_v, "c": p_c}
    # The negative pair of row i with base example l, per negative set.
    pair = {"audio": lambda l: (base_audio, visual[l, 0]),       # (A_i, V_l)
            "image": lambda l: (audio[l, 0], base_image),        # (A_l, V_i)
            "neighbour": lambda l: (neighbour_audio, visual[l, 0])}  # (A_j, V_l)
    if negative_anchor == "both":
      rows = [("ba", "image"), ("bv", "audio"), ("c", "neighbour")]
    else:
      rows = [(positives, negative_anchor)]
    row_losses = []
    for allowed, negative_set in rows:
      chosen = [t for t in positives if t in allowed]
      if not chosen:
        continue
      positive = sum(math.exp(terms[t] / temperature) for t in chosen)
      negative = 0.0
      for l in range(batch):
        if negative_mask[i][l]:
          negative += math.exp(pooled(_alpha(*pair[negative_set](l))) / temperature)
      row_losses.append(-math.log(positive / (positive + negative)))
    total += sum(row_losses) / len(row_losses)
  return total / batch


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_case(seed, batch=5, h=3, w=3, d=6):
  """Patches planted near some audio of the batch (any row, either slot), so
  soft masks are neither all ~1 nor all ~0 and negatives compete with the
  positives (losses from ~1e-4 to several nats)."""
  rng = np.random.default_rng(seed)
  # Everything scattered around one shared direction, by a spread drawn per
  # case: small spreads give near-equal cosines (hard, early-training-like).
  common = rng.normal(size=d)
  spread = rng.uniform(0.1, 3.0)
  audio = _normalize(common + spread * rng.normal(size=(batch, 2, d)))
  visual = common + spread * rng.normal(size=(batch, 2, h, w, d))
  planted = rng.random((batch, 2, h, w)) < rng.uniform(0.0, 0.9)
  flat_audio = audio.reshape(2 * batch, d)
  source = flat_audio[rng.integers(0, 2 * batch, size=(batch, 2, h, w))]
  noise = rng.uniform(0.05, 0.8)
  visual = np.where(planted[..., None], source + noise * rng.normal(size=visual.shape), visual)
  visual = _normalize(visual)
  kind = seed % 4
  if kind == 0:
    mask = rng.random((batch, batch)) < 0.6
  elif kind == 1:  # some rows without any negative, some columns never used
    mask = rng.random((batch, batch)) < 0.7
    mask[rng.integers(batch)] = False
    mask[:, rng.integers(batch)] = False
  elif kind == 2:  # everything but the diagonal
    mask = ~np.eye(batch, dtype=bool)
  else:
    mask = np.zeros((batch, batch), bool)
    mask[0, 1:] = True
  np.fill_diagonal(mask, False)
  return visual.astype(np.float32), audio.astype(np.float32), mask


def test_loss_matches_reference_on_many_random_cases():
  loss_fn = jax.jit(hardpos_losses.hardpos_loss,
                    static_argnames=("epsilon", "mask_tau", "temperature", "negative_pooling",
                                     "positives", "negative_anchor"))
  values = []
  for seed in range(80):  # masks: random, empty rows / unused columns, all, one row
    visual, audio, mask = random_case(seed, batch=3 + seed % 5)
    # The paper's values, and a softer setting where losses are O(1).
    kwargs = {} if seed % 2 else dict(epsilon=0.3, mask_tau=0.1, temperature=0.5)
    if seed % 3 == 0:  # LVS-code negatives
      kwargs["negative_pooling"] = "masked"
    if seed % 5 == 1:  # a subset of the positives (the ablation knob), in any order
      kwargs["positives"] = ("b", "ba", "cv", "vab")[seed // 5 % 4]
    if seed % 7 in (2, 5):  # the negatives' anchor: 3 of 7 cases keep "audio"
      kwargs["negative_anchor"] = "image" if seed % 7 == 2 else "both"
    elif seed % 7 == 4:
      kwargs["negative_anchor"] = "both"
    loss, aux = loss_fn(visual, audio, mask, **kwargs)
    expected = reference_loss(visual, audio, mask, **kwargs)
    values.append(expected)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5, atol=1e-7, err_msg=f"seed {seed}")
    assert float(aux["negatives_per_row"]) == pytest.approx(mask.sum(1).mean())
  assert max(values) > 0.5 and np.median(values) > 1e-2  # not a trivially easy set


def test_row_without_negatives_contributes_zero_and_all_masked_is_zero():
  visual, audio, mask = random_case(7)
  loss, _ = hardpos_losses.hardpos_loss(visual, audio, np.zeros_like(mask))
  assert float(loss) == 0.0
  assert reference_loss(visual, audio, np.zeros_like(mask)) == 0.0


def test_other_hyperparameters_and_bfloat16_inputs_stay_float32():
  visual, audio, mask = random_case(3)
  kwargs = dict(epsilon=0.3, mask_tau=0.1, temperature=0.5)
  loss, _ = hardpos_losses.hardpos_loss(visual, audio, mask, **kwargs)
  np.testing.assert_allclose(float(loss), reference_loss(visual, audio, mask, **kwargs),
                             rtol=2e-5, atol=2e-6)
  loss16, aux = hardpos_losses.hardpos_loss(jnp.asarray(visual, jnp.bfloat16),
                                            jnp.asarray(audio, jnp.bfloat16), mask)
  assert loss16.dtype == jnp.float32
  assert all(v.dtype == jnp.float32 for v in aux.values())


@pytest.mark.parametrize("seed", range(4))  # anchors: audio, image, both, both
def test_gradients_match_finite_differences_of_reference(seed):
  visual, audio, mask = random_case(100 + seed, batch=4, h=2, w=2, d=5)
  kwargs = {} if seed % 2 else dict(epsilon=0.3, mask_tau=0.1, temperature=0.5)
  if seed >= 2:
    kwargs["negative_pooling"] = "masked"
  kwargs["negative_anchor"] = ("audio", "image", "both", "both")[seed]
  grad_v, grad_a = jax.grad(lambda v, a: hardpos_losses.hardpos_loss(v, a, mask, **kwargs)[0],
                            argnums=(0, 1))(visual, audio)
  rng = np.random.default_rng(seed)
  for _ in range(3):
    dv = rng.normal(size=visual.shape)
    da = rng.normal(size=audio.shape)
    step = 1e-6
    fd = (reference_loss(visual + step * dv, audio + step * da, mask, **kwargs)
          - reference_loss(visual - step * dv, audio - step * da, mask, **kwargs)) / (2 * step)
    analytic = float(np.sum(np.asarray(grad_v, np.float64) * dv)
                     + np.sum(np.asarray(grad_a, np.float64) * da))
    assert abs(fd) > 1e-4  # a direction the loss really changes along
    np.testing.assert_allclose(analytic, fd, rtol=1e-3, atol=1e-6)


def test_positive_subsets_change_the_loss_and_bad_ones_are_refused():
  visual, audio, mask = random_case(4)
  values = {p: float(hardpos_losses.hardpos_loss(visual, audio, mask, positives=p)[0])
            for p in ("bavc", "ba", "b")}
  # Fewer positive terms: a smaller P_i, so a larger loss.
  assert values["b"] > values["ba"] > values["bavc"]
  for bad in ("", "bb", "bx", "BAVC"):
    with pytest.raises(ValueError, match="positives"):
      hardpos_losses.hardpos_loss(visual, audio, mask, positives=bad)


def test_stopping_the_neighbours_gradient_keeps_the_loss_and_moves_only_the_base_pair():
  visual, audio, mask = random_case(6)
  grad = jax.grad(lambda v, a, flag: hardpos_losses.hardpos_loss(
      v, a, mask, neighbour_gradient=flag)[0], argnums=(0, 1))
  value = lambda flag: float(hardpos_losses.hardpos_loss(  # noqa: E731
      visual, audio, mask, neighbour_gradient=flag)[0])
  assert value(False) == value(True)
  (gv, ga), (sv, sa) = grad(visual, audio, True), grad(visual, audio, False)
  # Slot 1 (V_k, A_j): a gradient with the paper's loss, none when stopped.
  assert np.abs(gv[:, 1]).max() > 1e-4 and np.abs(ga[:, 1]).max() > 1e-4
  assert np.all(sv[:, 1] == 0) and np.all(sa[:, 1] == 0)
  # Slot 0 (V_i, A_i): the same gradient either way.
  np.testing.assert_allclose(sv[:, 0], gv[:, 0], rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(sa[:, 0], ga[:, 0], rtol=1e-6, atol=1e-8)


def test_unknown_negative_pooling():
  visual, audio, mask = random_case(0)
  with pytest.raises(ValueError, match="negative_pooling"):
    hardpos_losses.hardpos_loss(visual, audio, mask, negative_pooling="max")


def test_a_detached_positive_keeps_the_loss_and_passes_no_gradient():
  """`detached="a"` (scripts/hardpos_detached_pa.py, recorded in config.json as
  method.detached_positives): P_a still enters P_i, but the audio neighbour A_j
  (slot 1 of the audio), which only P_a and P_c see, gets no gradient."""
  visual, audio, mask = random_case(6)
  loss = lambda a, detached: hardpos_losses.hardpos_loss(  # noqa: E731
      visual, a, mask, positives="ba", detached=detached)[0]
  assert float(loss(audio, "a")) == float(loss(audio, ""))
  free, stopped = jax.grad(loss)(audio, ""), jax.grad(loss)(audio, "a")
  assert np.abs(free[:, 1]).max() > 1e-4
  assert np.all(stopped[:, 1] == 0)
  assert np.abs(stopped[:, 0]).max() > 1e-4  # the base audio still learns


def test_every_anchor_and_subset_matches_reference():
  """Each (anchor, positives) pair once, on one hard case, both poolings."""
  visual, audio, mask = random_case(11, batch=5)
  for anchor in hardpos_losses.NEGATIVE_ANCHORS:
    for positives in ("bavc", "ba", "bv", "b", "c", "ac"):
      for pooling in ("mean", "masked"):
        kwargs = dict(negative_anchor=anchor, positives=positives, negative_pooling=pooling)
        loss, _ = hardpos_losses.hardpos_loss(visual, audio, mask, **kwargs)
        np.testing.assert_allclose(float(loss), reference_loss(visual, audio, mask, **kwargs),
                                   rtol=2e-5, atol=1e-7, err_msg=str(kwargs))


def test_unknown_negative_anchor():
  visual, audio, mask = random_case(0)
  with pytest.raises(ValueError, match="negative_anchor"):
    hardpos_losses.hardpos_loss(visual, audio, mask, negative_anchor="text")


# --- The per-audio level shortcut (docs: the HardPos anchor study) -----------
# A model with no localization can still give each audio its own overall
# response level c[A]: every pooled response of a pair (A, V) moves by c[A].
# Batch of 8 in mutual neighbour pairs (0,1), (2,3), ...: row i's audio and
# visual neighbour are its partner p(i), every other example is a negative.
# Responses carry no audio-visual information at all (all equal to 0.5).

_B = 8
_PARTNER = np.arange(_B) ^ 1
_PAIR_MASK = ~np.eye(_B, dtype=bool)
_PAIR_MASK[np.arange(_B), _PARTNER] = False


def _objective_with_levels(levels, anchor, positives):
  """Eq. 6 on all-equal responses plus per-audio levels: P_b, P_v use A_i,
  P_a, P_c use A_p(i); negatives (A_i, V_l), (A_l, V_i), (A_p(i), V_l)."""
  c = jnp.asarray(levels, jnp.float32)
  base = 0.5
  positive_scores = base + jnp.stack([c, c[_PARTNER], c, c[_PARTNER]], axis=1)
  ones = jnp.ones((_B, _B))
  negatives = {"audio": base + c[:, None] * ones, "image": base + c[None, :] * ones,
               "neighbour_audio": base + c[_PARTNER][:, None] * ones}
  rows = hardpos_losses.contrastive_rows(anchor, positives)
  return float(hardpos_losses.hardpos_objective(positive_scores, negatives, _PAIR_MASK, rows,
                                                TEMP))


def test_per_audio_levels_lower_only_the_audio_anchored_loss_with_p_a():
  """Exact property: on responses with no audio-visual information,
  (1) with the audio anchor and P_a, levels that differ between neighbours
      (+t for one of each pair, -t for the other) lower the loss, by more
      than a fifth at t = 0.2;
  (2) with the image anchor and with both anchors (positives "ba" and
      "bavc"), no per-audio levels lower the loss: 200 random level vectors
      at four scales, and the levels of (1), all leave it >= its value at
      zero (to float32 rounding);
  (3) with the audio anchor and P_b alone, levels change nothing (every term
      of a row shares A_i)."""
  rng = np.random.default_rng(0)
  spread = np.where(np.arange(_B) % 2 == 0, 1.0, -1.0)
  for positives in ("ba", "bavc"):
    flat = _objective_with_levels(np.zeros(_B), "audio", positives)
    assert _objective_with_levels(0.2 * spread, "audio", positives) < 0.8 * flat
    for anchor in ("image", "both"):
      flat = _objective_with_levels(np.zeros(_B), anchor, positives)
      candidates = [t * spread for t in (0.05, 0.2, 1.0)]
      candidates += [scale * rng.normal(size=_B) for scale in (0.01, 0.05, 0.2, 1.0)
                     for _ in range(50)]
      lowest = min(_objective_with_levels(c, anchor, positives) for c in candidates)
      assert lowest >= flat - 1e-5, (anchor, positives, lowest, flat)
  flat = _objective_with_levels(np.zeros(_B), "audio", "b")
  for c in (0.2 * spread, rng.normal(size=_B)):
    assert _objective_with_levels(c, "audio", "b") == pytest.approx(flat, abs=1e-5)


def test_anchor_makes_the_loss_blind_to_levels_of_its_own_side():
  """On real (random) responses: the image-anchored loss with positives in
  {b, a} is unchanged by per-IMAGE levels, and the audio-anchored loss with
  positives in {b, v} by per-AUDIO levels (each row shares one side); the
  audio-anchored loss with P_a is not unchanged by per-audio levels."""
  visual, audio, mask = random_case(21, batch=6)
  # Neighbour slots hold other base examples, so a level belongs to one input.
  partner = np.roll(np.arange(6), 1)
  visual[:, 1], audio[:, 1] = visual[partner, 0], audio[partner, 0]
  pos = np.asarray(hardpos_losses.positive_responses(visual, audio))
  neg = {k: np.asarray(v) for k, v in hardpos_losses.negative_scores(
      visual, audio, ("audio", "image", "neighbour_audio")).items()}
  c = np.random.default_rng(1).normal(size=6) * 0.3

  def objective(anchor, positives, audio_levels=None, image_levels=None):
    a = np.zeros(6) if audio_levels is None else audio_levels
    v = np.zeros(6) if image_levels is None else image_levels
    # P_b (A_i, V_i), P_a (A_p, V_i), P_v (A_i, V_p), P_c (A_p, V_p).
    shifted = pos + np.stack([a + v, a[partner] + v, a + v[partner], a[partner] + v[partner]], 1)
    negs = {"audio": neg["audio"] + a[:, None] + v[None, :],
            "image": neg["image"] + a[None, :] + v[:, None],
            "neighbour_audio": neg["neighbour_audio"] + a[partner][:, None] + v[None, :]}
    rows = hardpos_losses.contrastive_rows(anchor, positives)
    return float(hardpos_losses.hardpos_objective(shifted, negs, mask, rows, TEMP))

  for positives in ("ba", "b", "a"):
    assert objective("image", positives, image_levels=c) == pytest.approx(
        objective("image", positives), rel=1e-5)
  for positives in ("bv", "b", "v"):
    assert objective("audio", positives, audio_levels=c) == pytest.approx(
        objective("audio", positives), rel=1e-5)
  assert abs(objective("audio", "ba", audio_levels=c) - objective("audio", "ba")) > 1e-3


def test_level_diagnostics_find_planted_levels():
  """Responses = an information-free constant + a per-audio level: the spread
  is the levels' std, P_a - P_b follows the level gap exactly, and removing
  the levels gives the chance loss. Random responses: no such signature."""
  rng = np.random.default_rng(3)
  c = rng.normal(size=_B) * 0.2
  pos = 0.5 + np.stack([c, c[_PARTNER], c, c[_PARTNER]], axis=1)
  ones = np.ones((_B, _B))
  negs = {"audio": 0.5 + c[:, None] * ones, "image": 0.5 + c[None, :] * ones,
          "neighbour_audio": 0.5 + c[_PARTNER][:, None] * ones}
  rows = hardpos_losses.contrastive_rows("audio", "ba")
  d = hardpos_losses.level_diagnostics(pos, negs, _PAIR_MASK, rows, TEMP)
  assert float(d["level_spread"]) == pytest.approx(np.std(c), rel=1e-5)
  assert float(d["level_corr"]) == pytest.approx(1.0, abs=1e-5)
  assert float(d["loss_without_levels"]) == pytest.approx(float(d["loss_chance"]), rel=1e-5)
  assert float(d["loss"]) < float(d["loss_chance"]) - 0.05  # the shortcut lowered it
  noise = {k: v + rng.normal(size=v.shape) * 0.2 for k, v in negs.items()}
  d = hardpos_losses.level_diagnostics(pos + rng.normal(size=pos.shape) * 0.2, noise, _PAIR_MASK,
                                       rows, TEMP)
  assert abs(float(d["level_corr"])) < 0.9
