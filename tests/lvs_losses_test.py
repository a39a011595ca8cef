"""Tests of soundloc_jax.lvs_losses against a slow float64 reference.

The reference is written from the rules (LVS baseline as HardPos describes it,
with the choices documented in the module), with explicit loops over samples,
audios, patches and channels; nothing in it is vectorised.

  A[i,j][u,v] = <V_i[u,v], a_j>                      (image i, audio j)
  m = sigmoid((A[i,i] - eps) / tau_m)                 raw cosine, no min-max
  P_i = sum_uv m A[i,i] / sum_uv m
  N_i = sum_uv (1 - n) A[i,i] / sum_uv (1 - n),  n = sigmoid((A[i,i]-eps2)/tau_m)
        with the tri-map, n = m without it          (only with hard_negative)
  S_ij = mean_uv A[i,j]  ("mean")  or the m-weighted mean of A[i,j] ("masked")
  loss_i = -log( e^{P_i/T} / (e^{P_i/T} [+ e^{N_i/T}] + sum_{j != i} e^{S_ij/T}) )
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soundloc_jax.configs import lvs as lvs_config
from soundloc_jax import methods
from soundloc_jax.methods.lvs import lvs_loss
from tests.helpers import correlated_features as make_inputs  # patches correlated with their audio

RTOL = 1e-5
ATOL = 1e-5

# Jitted once per (shape, keyword set): eager dispatch compiles every primitive
# separately and dominates the runtime of this file.
_STATIC = ("epsilon", "epsilon2", "mask_tau", "temperature", "trimap", "hard_negative",
           "negative_pooling")
_jit_lvs_loss = jax.jit(lvs_loss, static_argnames=_STATIC)

# --------------------------------------------------------------------------
# Slow float64 reference (loops only).
# --------------------------------------------------------------------------


def _sigmoid(z):
  if z >= 0:
    return 1.0 / (1.0 + math.exp(-z))
  e = math.exp(z)
  return e / (1.0 + e)


def _map(V_i, a_j):
  h, w, d = V_i.shape
  out = [[0.0] * w for _ in range(h)]
  for y in range(h):
    for x in range(w):
      s = 0.0
      for k in range(d):
        s += float(V_i[y, x, k]) * float(a_j[k])
      out[y][x] = s
  return out


def _weighted_mean(cos_map, weight_fn):
  num = den = 0.0
  for row in cos_map:
    for value in row:
      wgt = weight_fn(value)
      num += wgt * value
      den += wgt
  return num / den


def _plain_mean(cos_map):
  total, count = 0.0, 0
  for row in cos_map:
    for value in row:
      total += value
      count += 1
  return total / count


def ref_lvs(V, a, *, epsilon=0.65, epsilon2=0.4, mask_tau=0.03, temperature=0.07,
            trimap=True, hard_negative=True, negative_pooling="mean"):
  V = np.asarray(V, dtype=np.float64)
  a = np.asarray(a, dtype=np.float64)
  B = V.shape[0]
  pos_weight = lambda c: _sigmoid((c - epsilon) / mask_tau)
  if trimap:
    bg_weight = lambda c: 1.0 - _sigmoid((c - epsilon2) / mask_tau)
  else:
    bg_weight = lambda c: 1.0 - _sigmoid((c - epsilon) / mask_tau)
  total = 0.0
  for i in range(B):
    own = _map(V[i], a[i])
    logits = [_weighted_mean(own, pos_weight) / temperature]
    if hard_negative:
      logits.append(_weighted_mean(own, bg_weight) / temperature)
    for j in range(B):
      if j == i:
        continue
      other = _map(V[i], a[j])
      score = _plain_mean(other) if negative_pooling == "mean" else _weighted_mean(other, pos_weight)
      logits.append(score / temperature)
    top = max(logits)
    denominator = sum(math.exp(l - top) for l in logits)
    total += -(logits[0] - top - math.log(denominator))
  return total / B


# --------------------------------------------------------------------------
# Inputs (`make_inputs`, tests.helpers.correlated_features): patch features
# correlated with the paired audio by a random amount, so the cosine maps span
# roughly [-0.3, 1] and cross both thresholds.
# --------------------------------------------------------------------------


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


VARIANTS = [
    dict(trimap=True, hard_negative=True),                 # "lvs"
    dict(trimap=False, hard_negative=False),               # "lvs_vanilla"
    dict(trimap=False, hard_negative=True),                # LVS Neg = 1 - Pos
    dict(trimap=True, hard_negative=True, negative_pooling="masked"),
    dict(trimap=False, hard_negative=False, negative_pooling="masked"),
]


@pytest.mark.parametrize("B,h,w,d", [(1, 3, 3, 8), (3, 4, 5, 16), (6, 7, 7, 32)])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()))
def test_matches_reference(B, h, w, d, variant):
  V, a = make_inputs(B * 100 + h, B, h, w, d)
  cos = np.einsum("ihwd,id->ihw", V, a)
  assert cos.max() > 0.65 and cos.min() < 0.4  # both thresholds are exercised
  loss, aux = _jit_lvs_loss(jnp.asarray(V), jnp.asarray(a), **variant)
  np.testing.assert_allclose(float(loss), ref_lvs(V, a, **variant), rtol=RTOL, atol=ATOL)
  assert all(np.isfinite(float(v)) for v in aux.values())


def test_non_default_hyper_parameters():
  V, a = make_inputs(7, 4, 5, 5, 16)
  kwargs = dict(epsilon=0.5, epsilon2=0.2, mask_tau=0.1, temperature=0.2)
  loss, _ = _jit_lvs_loss(jnp.asarray(V), jnp.asarray(a), **kwargs)
  np.testing.assert_allclose(float(loss), ref_lvs(V, a, **kwargs), rtol=RTOL, atol=ATOL)


def test_diagonal_is_excluded_not_scaled():
  """A negative own map must not become a large logit (LVS's -99 scaling would)."""
  V, a = make_inputs(3, 4, 4, 4, 16)
  V[0] = _normalize(-np.broadcast_to(a[0], V[0].shape) + 0.1)  # A[0,0] ~ -1
  loss, _ = _jit_lvs_loss(jnp.asarray(V), jnp.asarray(a), trimap=False, hard_negative=False)
  np.testing.assert_allclose(float(loss), ref_lvs(V, a, trimap=False, hard_negative=False),
                             rtol=RTOL, atol=ATOL)
  assert float(loss) < 100.0


@pytest.mark.parametrize("variant", VARIANTS[:3], ids=["lvs", "vanilla", "neg_no_trimap"])
@pytest.mark.parametrize("level", [1.0, 0.65, 0.0, -1.0])
def test_constant_map(variant, level):
  """A sample whose own map is constant: masks are uniform, responses = the level.

  level 1.0 saturates sigmoid((1 - 0.4)/0.03): 1 - n must not round to 0/0;
  level -1.0 makes m ~ 1e-24 everywhere: |m| must not be treated as 0.
  """
  B, h, w, d = 3, 4, 4, 8
  V, a = make_inputs(11, B, h, w, d)
  rng = np.random.default_rng(0)
  orth = rng.normal(size=d)
  orth -= orth @ a[0].astype(np.float64) * a[0]
  orth /= np.linalg.norm(orth)
  s = math.sqrt(max(0.0, 1.0 - level * level))
  V[0] = (level * a[0] + s * orth).astype(np.float32)
  loss, aux = _jit_lvs_loss(jnp.asarray(V), jnp.asarray(a), **variant)
  assert np.isfinite(float(loss))
  np.testing.assert_allclose(float(loss), ref_lvs(V, a, **variant), rtol=1e-4, atol=1e-4)
  grads = jax.jit(jax.grad(lambda v, x: lvs_loss(v, x, **variant)[0], argnums=(0, 1)))(
      jnp.asarray(V), jnp.asarray(a))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


@pytest.mark.parametrize("variant", VARIANTS[:2], ids=["lvs", "vanilla"])
def test_gradient_finite_and_jittable(variant):
  V, a = make_inputs(5, 4, 6, 6, 16)
  fn = jax.jit(jax.value_and_grad(lambda v, x: lvs_loss(v, x, **variant)[0], argnums=(0, 1)))
  loss, (gv, ga) = fn(jnp.asarray(V), jnp.asarray(a))
  assert np.isfinite(float(loss))
  assert bool(jnp.all(jnp.isfinite(gv))) and bool(jnp.all(jnp.isfinite(ga)))
  assert float(jnp.abs(gv).sum()) > 0 and float(jnp.abs(ga).sum()) > 0


def test_bfloat16_inputs_compute_in_float32():
  V, a = make_inputs(9, 3, 4, 4, 16)
  loss, _ = _jit_lvs_loss(jnp.asarray(V, jnp.bfloat16), jnp.asarray(a, jnp.bfloat16))
  assert loss.dtype == jnp.float32
  V16 = np.asarray(jnp.asarray(V, jnp.bfloat16).astype(jnp.float32))
  a16 = np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(float(loss), ref_lvs(V16, a16), rtol=RTOL, atol=ATOL)


def test_unknown_negative_pooling():
  V, a = make_inputs(1, 2, 2, 2, 4)
  with pytest.raises(ValueError, match="negative_pooling"):
    lvs_loss(jnp.asarray(V), jnp.asarray(a), negative_pooling="max")


# --------------------------------------------------------------------------
# Registry and config wiring.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("variant,name,flags", [
    ("full", "lvs", dict(trimap=True, hard_negative=True)),
    ("vanilla", "lvs_vanilla", dict(trimap=False, hard_negative=False)),
])
def test_registry_uses_method_config(variant, name, flags):
  config = lvs_config.get_config(f"variant={variant}")
  assert config.method.name == name
  method = methods.get(name)
  assert not method.needs_teacher and not method.needs_neighbours
  # The default is LVS's released-code negatives, the one that learns.
  assert config.method.negative_pooling == "masked"
  V, a = make_inputs(2, 4, 4, 4, 16)
  outputs = {"visual_features": jnp.asarray(V), "audio_embedding": jnp.asarray(a)}
  for pooling in ("masked", "mean"):  # the entry must read the config, not defaults
    config.method.temperature = 0.1
    config.method.negative_pooling = pooling
    loss, aux = jax.jit(lambda o: method.loss(o, None, {}, config.method, None))(outputs)
    np.testing.assert_allclose(
        float(loss), ref_lvs(V, a, temperature=0.1, negative_pooling=pooling, **flags),
        rtol=RTOL, atol=ATOL)
  assert set(aux) >= {"positive_response", "negative_response"}


def test_config_errors():
  assert lvs_config.get_config("").method.name == "lvs"
  with pytest.raises(ValueError, match="unknown preset"):
    lvs_config.get_config("flickr_nope")
  with pytest.raises(ValueError, match="unknown option"):
    lvs_config.get_config("varaint=full")
  with pytest.raises(ValueError, match="unknown variant"):
    lvs_config.get_config("variant=tri")


@pytest.mark.parametrize("name", ["lvs", "lvs_vanilla", "hardpos"])
def test_methods_refuse_an_unknown_negative_pooling_before_training(name):
  """A bad `config.method.negative_pooling` is one ConfigError naming the key,
  raised by the method's config check (train runs it before reading data)."""
  from soundloc_jax import methods
  from soundloc_jax.configs import default
  from soundloc_jax.errors import ConfigError
  cfg = default.get_config().method  # every method's fields at their defaults
  cfg.negative_pooling = "masked"
  methods.get(name).check_config(cfg)
  cfg.negative_pooling = "max"
  with pytest.raises(ConfigError, match=r"config\.method\.negative_pooling='max'"):
    methods.get(name).check_config(cfg)
