"""Tests of soundloc_jax.ezvsl_losses against a slow float64 reference written
from the rules with loops only (no vectorisation):

  S_ij = max_uv <V_i[u,v], a_j>                    (image i, audio j)
  L = -1/B sum_i log softmax_j(S_ij / T)[i]        (image -> audio)
      -1/B sum_j log softmax_i(S_ij / T)[j]        (audio -> image)
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soundloc_jax.configs import ezvsl as ezvsl_config
from soundloc_jax import methods
from soundloc_jax.methods.ezvsl import ezvsl_loss
from tests.helpers import correlated_features as make_inputs  # patches correlated with their audio

RTOL = ATOL = 1e-5
_jit_loss = jax.jit(ezvsl_loss, static_argnames=("temperature",))


def ref_ezvsl(V, a, temperature=0.03):
  V = np.asarray(V, dtype=np.float64)
  a = np.asarray(a, dtype=np.float64)
  B, h, w, d = V.shape
  S = [[0.0] * B for _ in range(B)]
  for i in range(B):
    for j in range(B):
      best = -math.inf
      for y in range(h):
        for x in range(w):
          best = max(best, sum(float(V[i, y, x, k]) * float(a[j, k]) for k in range(d)))
      S[i][j] = best / temperature

  def cross_entropy(logits, target):
    top = max(logits)
    return -(logits[target] - top - math.log(sum(math.exp(l - top) for l in logits)))

  rows = sum(cross_entropy(S[i], i) for i in range(B)) / B
  columns = sum(cross_entropy([S[i][j] for i in range(B)], j) for j in range(B)) / B
  return rows + columns


@pytest.mark.parametrize("B,h,w,d", [(1, 3, 3, 8), (3, 4, 5, 16), (6, 7, 7, 32)])
@pytest.mark.parametrize("temperature", [0.03, 0.2])
def test_matches_reference(B, h, w, d, temperature):
  V, a = make_inputs(B * 10 + h, B, h, w, d)
  loss, aux = _jit_loss(jnp.asarray(V), jnp.asarray(a), temperature=temperature)
  np.testing.assert_allclose(float(loss), ref_ezvsl(V, a, temperature), rtol=RTOL, atol=ATOL)
  assert all(np.isfinite(float(x)) for x in aux.values())


def test_asymmetric_scores_need_both_directions():
  """Rows and columns of S differ here, so a one-direction loss cannot match."""
  V, a = make_inputs(4, 4, 3, 3, 8)
  V[1] = V[0]  # image 1 = image 0: column 0 and column 1 see the same images
  S = np.einsum("ihwd,jd->ijhw", V.astype(np.float64), a.astype(np.float64)).max(axis=(2, 3))
  assert not np.allclose(S, S.T)
  loss, _ = _jit_loss(jnp.asarray(V), jnp.asarray(a))
  np.testing.assert_allclose(float(loss), ref_ezvsl(V, a), rtol=RTOL, atol=ATOL)


def test_gradient_reaches_only_each_pairs_best_patch():
  """Max pooling: the gradient w.r.t. one image's patches is non-zero only on
  patches that are the arg-max of that image's map with some audio."""
  B, h, w, d = 3, 4, 4, 8
  V, a = make_inputs(8, B, h, w, d)
  gv = np.asarray(jax.jit(jax.grad(lambda v: ezvsl_loss(v, jnp.asarray(a))[0]))(jnp.asarray(V)))
  maps = np.einsum("ihwd,jd->ijhw", V, a).reshape(B, B, h * w)
  for i in range(B):
    best = {int(np.argmax(maps[i, j])) for j in range(B)}
    touched = {p for p in range(h * w) if np.abs(gv[i].reshape(h * w, d)[p]).sum() > 0}
    assert touched and touched <= best


def test_bfloat16_inputs_compute_in_float32():
  V, a = make_inputs(9, 3, 4, 4, 16)
  loss, _ = _jit_loss(jnp.asarray(V, jnp.bfloat16), jnp.asarray(a, jnp.bfloat16))
  assert loss.dtype == jnp.float32
  V16 = np.asarray(jnp.asarray(V, jnp.bfloat16).astype(jnp.float32))
  a16 = np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(float(loss), ref_ezvsl(V16, a16), rtol=RTOL, atol=ATOL)


def test_registry_reads_the_method_config():
  config = ezvsl_config.get_config("")
  method = methods.get(config.method.name)
  assert config.method.name == "ezvsl" and not method.needs_teacher
  assert not method.needs_neighbours
  config.method.temperature = 0.1
  V, a = make_inputs(2, 4, 4, 4, 16)
  outputs = {"visual_features": jnp.asarray(V), "audio_embedding": jnp.asarray(a)}
  loss, _ = jax.jit(lambda o: method.loss(o, None, {}, config.method, None))(outputs)
  np.testing.assert_allclose(float(loss), ref_ezvsl(V, a, 0.1), rtol=RTOL, atol=ATOL)
  with pytest.raises(ValueError, match="unknown option"):
    ezvsl_config.get_config(",variant=full")


def test_config_follows_ezvsl_architecture():
  """Max-pooled audio everywhere; the plain ResNet-18's 7x7 visual map
  (layer4 stride 2) on the real-data presets, the demo's 4x4 map on the demo."""
  demo, real = ezvsl_config.get_config(""), ezvsl_config.get_config("vggsound_144k")
  assert demo.model.audio_pool == real.model.audio_pool == "max"
  assert (demo.model.layer4_stride, real.model.layer4_stride) == (1, 2)
  assert real.dataset.name == "vggsound/144k"
