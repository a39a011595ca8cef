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
                   negative_pooling="mean", positives="bavc"):
  visual = np.asarray(visual, np.float64)
  audio = np.asarray(audio, np.float64)
  batch = visual.shape[0]
  total = 0.0
  for i in range(batch):
    base_audio, neighbour_audio = audio[i, 0], audio[i, 1]  # A_i, A_j
    base_image, neighbour_image = visual[i, 0], visual[i, 1]  # V_i, V_k
    p_b = _masked(_alpha(base_audio, base_image), epsilon, mask_tau)
    p_a = _masked(_alpha(neighbour_audio, base_image), epsilon, mask_tau)
    p_v = _masked(_alpha(base_audio, neighbour_image), epsilon, mask_tau)
    p_c = _masked(_alpha(neighbour_audio, neighbour_image), epsilon, mask_tau)
    terms = {"b": p_b, "a": p_a, "v": p_v, "c": p_c}
    positive = sum(math.exp(terms[t] / temperature) for t in positives)
    negative = 0.0
    for l in range(batch):
      if negative_mask[i][l]:
        alpha = _alpha(base_audio, visual[l, 0])
        score = (_mean(alpha) if negative_pooling == "mean"
                 else _masked(alpha, epsilon, mask_tau))
        negative += math.exp(score / temperature)
    total += -math.log(positive / (positive + negative))
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
                                     "positives"))
  values = []
  for seed in range(80):  # masks: random, empty rows / unused columns, all, one row
    visual, audio, mask = random_case(seed, batch=3 + seed % 5)
    # The paper's values, and a softer setting where losses are O(1).
    kwargs = {} if seed % 2 else dict(epsilon=0.3, mask_tau=0.1, temperature=0.5)
    if seed % 3 == 0:  # LVS-code negatives
      kwargs["negative_pooling"] = "masked"
    if seed % 5 == 1:  # a subset of the positives (the ablation knob), in any order
      kwargs["positives"] = ("b", "ba", "cv", "vab")[seed // 5 % 4]
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


@pytest.mark.parametrize("seed", range(4))
def test_gradients_match_finite_differences_of_reference(seed):
  visual, audio, mask = random_case(100 + seed, batch=4, h=2, w=2, d=5)
  kwargs = {} if seed % 2 else dict(epsilon=0.3, mask_tau=0.1, temperature=0.5)
  if seed >= 2:
    kwargs["negative_pooling"] = "masked"
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
