"""LVS baseline losses (Chen et al., "Localizing Visual Sounds the Hard Way").

The baseline HardPos builds on, as one pure, batched jnp function in the style
of `methods.icl`, and its registry entries "lvs" (tri-map + hard-negative
logit) and "lvs_vanilla" (neither: HardPos's Vanilla-LVS, the model it mines
with): whole batches, masks instead of gathers (the
excluded diagonal is a mask, not a gather), no Python loop over samples or
patches, float32 arithmetic whatever the compute dtype.

Inputs follow the model contract: `visual_features` [B, h, w, d] L2-normalised
per patch, `audio_embedding` [B, d] L2-normalised. The response maps are
  A[i, j] = <V_i[u, v], a_j>  for all patches uv: [B, B, h, w], image i, audio j.
Row i of the contrastive problem is *image i*, its columns are audios, as in
LVS's released code (HardPos Eq. 5 writes alpha_il with audio i and image l;
for the baseline we follow LVS).

Rules, with the choices the papers leave open made explicit:
* Soft masks are sigmoids of the RAW cosine map (no min-max normalisation):
  m_i = sigmoid((A[i,i] - epsilon) / mask_tau), epsilon = 0.65, tau = 0.03.
* A masked response is the mask-weighted mean <w, A> / |w| with |w| = sum of
  the mask values over the h*w patches (not a count of patches above a
  threshold, not a norm). It is computed as sum softmax(log w) * A with
  log w = log_sigmoid(...), which is exactly <w, A>/|w| but cannot divide by
  zero when every mask value underflows, and keeps 1 - sigmoid(z) accurate
  as sigmoid(-z) when z is large (a map saturated at high cosine).
* Positive P_i = masked response of A[i,i] with m_i (the true pair's own map
  gives its own mask; the mask is NOT stop-gradiented, as in LVS).
* Hard negative (only when `hard_negative`): N_i = masked response of A[i,i]
  with 1 - n_i, where n_i = sigmoid((A[i,i] - epsilon2) / mask_tau) with the
  tri-map (epsilon2 = 0.4), or n_i = m_i without it (LVS's `Neg = 1 - Pos`).
  So `trimap` only changes the loss when `hard_negative` is on.
* Negatives between samples: for each audio j != i a score S_ij of A[i, j].
  Default (`negative_pooling="mean"`): the plain spatial mean over h*w, as
  HardPos Eq. 5 writes N_i. `"masked"` instead uses the soft mask of A[i, j]
  itself (sigmoid((A[i,j] - epsilon)/mask_tau)), which is what LVS's released
  model.py does; kept as an option for reproducing that code.
* The diagonal j = i is EXCLUDED from the negatives (masked to -inf before the
  logsumexp). LVS's code multiplies it by -99 instead, which only excludes it
  while the map is positive and turns it into a huge positive logit when the
  masked response is negative; we do not copy that.
* Logits of row i, in this order: [P_i, N_i (only with hard_negative),
  S_ij for j != i] / temperature (0.07, LVS's code), label 0 (the positive);
  loss = mean over rows of the cross-entropy. LVS's code places N_i last;
  the order does not change the loss.
* "vanilla" LVS (`trimap=False, hard_negative=False`): logits [P_i, S_ij].

`aux` holds scalar diagnostics: the mean positive response, the mean
between-sample negative, the mean hard negative (0 when off) and the mean
soft-mask area fraction |m_i| / (h w).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from soundloc_jax.errors import ConfigError
from soundloc_jax.methods.registry import Method, register

NEGATIVE_POOLINGS = ("mean", "masked")


def response_maps(visual_features: jax.Array, audio_embedding: jax.Array) -> jax.Array:
  """A[i, j] = cosine map of image i with audio j, `[B, B, h, w]` float32."""
  return jnp.einsum("ihwd,jd->ijhw", visual_features.astype(jnp.float32),
                    audio_embedding.astype(jnp.float32))


def masked_response(response: jax.Array, log_weights: jax.Array) -> jax.Array:
  """<w, response> / |w| over the last two (spatial) axes, w = exp(log_weights)."""
  shape = response.shape[:-2] + (-1,)
  weights = jax.nn.softmax(log_weights.reshape(shape), axis=-1)
  return jnp.sum(weights * response.reshape(shape), axis=-1)


def lvs_loss(visual_features, audio_embedding, *, epsilon=0.65, epsilon2=0.4, mask_tau=0.03,
             temperature=0.07, trimap=True, hard_negative=True, negative_pooling="mean"):
  """LVS contrastive loss (module docstring has the rules). Returns `(loss, aux)`."""
  if negative_pooling not in NEGATIVE_POOLINGS:
    raise ValueError(f"lvs_loss: negative_pooling {negative_pooling!r} not in {NEGATIVE_POOLINGS}")
  maps = response_maps(visual_features, audio_embedding)
  batch, _, h, w = maps.shape
  eye = jnp.eye(batch, dtype=bool)
  own = jnp.einsum("iihw->ihw", maps)  # A[i, i]: image i with its own audio

  positive_logit_mask = (own - epsilon) / mask_tau
  positive = masked_response(own, jax.nn.log_sigmoid(positive_logit_mask))

  if negative_pooling == "mean":
    between = jnp.mean(maps, axis=(2, 3))
  else:
    between = masked_response(maps, jax.nn.log_sigmoid((maps - epsilon) / mask_tau))
  neg_inf = jnp.finfo(jnp.float32).min
  between_logits = jnp.where(eye, neg_inf, between / temperature)

  columns = [positive[:, None] / temperature]
  if hard_negative:
    region = (own - epsilon2) / mask_tau if trimap else positive_logit_mask
    # 1 - sigmoid(z) = sigmoid(-z): the background weight.
    hard = masked_response(own, jax.nn.log_sigmoid(-region))
    columns.append(hard[:, None] / temperature)
  else:
    hard = jnp.zeros_like(positive)
  logits = jnp.concatenate(columns + [between_logits], axis=1)
  loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])

  off_diagonal = jnp.logical_not(eye).astype(jnp.float32)
  aux = {
      "positive_response": jnp.mean(positive),
      "negative_response": jnp.sum(between * off_diagonal) / jnp.maximum(jnp.sum(off_diagonal), 1.0),
      "hard_negative_response": jnp.mean(hard),
      "positive_mask_fraction": jnp.mean(jax.nn.sigmoid(positive_logit_mask)),
  }
  return loss, aux


# ----------------------------------------------------------------------------
# Registry entries (config.method fields: epsilon, epsilon2, mask_tau,
# temperature, negative_pooling; configs/lvs.py).

def _make_method_loss(trimap, hard_negative):
  def loss(outputs, teacher_outputs, batch, cfg, rng):
    del teacher_outputs, batch, rng
    return lvs_loss(
        outputs["visual_features"], outputs["audio_embedding"], epsilon=cfg.epsilon,
        epsilon2=cfg.epsilon2, mask_tau=cfg.mask_tau, temperature=cfg.temperature,
        trimap=trimap, hard_negative=hard_negative, negative_pooling=cfg.negative_pooling)
  return loss


def check_negative_pooling(cfg):
  """ConfigError unless `config.method.negative_pooling` is known (LVS and HardPos)."""
  if cfg.negative_pooling not in NEGATIVE_POOLINGS:
    raise ConfigError(f"config.method.negative_pooling={cfg.negative_pooling!r} is not one of "
                      f"{NEGATIVE_POOLINGS}")


register(Method("lvs", _make_method_loss(trimap=True, hard_negative=True),
                check_config=check_negative_pooling))
register(Method("lvs_vanilla", _make_method_loss(trimap=False, hard_negative=False),
                check_config=check_negative_pooling))
