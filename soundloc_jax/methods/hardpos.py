"""HardPos loss (Senocak et al., "Learning Sound Localization Better from
Semantically Similar Samples", Eq. 5-6) as one pure, batched jnp function:
whole batches, masks instead of gathers, no Python loop over samples, float32
arithmetic whatever the compute dtype; and its registry entry "hardpos"
(neighbour batches: the neighbour sets come from `methods.neighbours`, mined
by `methods.mining`).

Inputs (the model contract of `models.av_model`, reshaped by the method to
the neighbour layout of `input_pipeline.train_iterator`):
  `visual_features` [B, 2, h, w, d]  slot 0: base image V_i, slot 1: the
                                     sampled visual neighbour's image V_k
  `audio_embedding` [B, 2, d]        slot 0: base audio A_i, slot 1: the
                                     sampled audio neighbour's audio A_j
  `negative_mask`   [B, B] bool      [i, l]: base image l is a negative of row i
Every feature is L2-normalised, so alpha(A, V) = <A, V[u, v]> is Eq. 2's
cosine map. The paper's index order is kept: alpha_xy pairs AUDIO x with
IMAGE y, and row i of the contrastive problem is the base audio A_i.

Interpretation choices (the paper leaves these open):
* The four positives of row i use only what Eq. 5 names: P_b = (A_i, V_i),
  P_a = (A_j, V_i), P_v = (A_i, V_k), P_c = (A_j, V_k), with ONE neighbour j
  drawn from P_iA and ONE k from P_iV per row and step (a sampled estimate of
  the sets; the audio neighbour's image and the visual neighbour's audio are
  never used, so the pipeline does not load them).
* Each positive is the masked response <m, alpha>/|m| with its OWN soft mask
  m = sigmoid((alpha - epsilon) / mask_tau) of the same map (Eq. 3, raw
  cosine, epsilon = 0.65, mask_tau = 0.03), |m| = sum of mask values; not
  stop-gradiented (as LVS). Computed as sum softmax(log m) * alpha, which is
  exactly that ratio but cannot divide by zero when every mask value underflows.
* Negatives N_i are the batch's BASE images l with `negative_mask[i, l]`,
  scored by the plain spatial mean of alpha(A_i, V_l) (Eq. 5, default
  `negative_pooling="mean"`), or with `"masked"` by the soft-masked response
  of alpha(A_i, V_l) with its own mask, as the positives (what LVS's released
  code does for its negatives; see the README's demo finding). Eq. 4's
  complement of P_iA u P_iV would contain i itself; the base pair is the
  positive, so the host-built mask must exclude l = i as well (the pipeline's
  does). The neighbours' images are not negatives of other rows.
* Temperature: Eq. 5-6 show none; every logit (the four positives and the
  negatives) is divided by `temperature` (default 0.07, as LVS's code), i.e.
  P_i = sum_x exp(P_x / T), N_i = sum_l exp(mean alpha_il / T).
* `positives` (default "bavc", all four) names the terms of P_i, an ablation
  knob the paper does not show: e.g. "ba" keeps P_b and P_a only, "b" is the
  Vanilla-LVS positive with HardPos's negative set.
* `neighbour_gradient` (default True, the paper's loss): with False the
  neighbours' features (slot 1: V_k and A_j) are stop-gradiented, so the
  hard-positive terms move only the base image and audio. A diagnostic and
  a deviation from the paper: the neighbours appear in no negative, so
  their gradient is a pull toward the base pair alone (see the README).
* `detached` (default "", none): positives (letters of "bavc") whose logit
  enters P_i without a gradient, a diagnostic of which term drives training
  (scripts/hardpos_detached_pa.py; not in the paper).
* L = -mean_i log(P_i / (P_i + N_i)) (Eq. 6), computed per row as
  softplus(logsumexp(negative logits) - logsumexp(positive logits)). A row
  without negatives contributes exactly 0.

`aux` holds scalar diagnostics: the mean base response P_b, the mean of the
three hard-positive responses, the mean negative score over masked-in pairs,
and the mean number of negatives per row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from soundloc_jax.errors import ConfigError
from soundloc_jax.methods.lvs import NEGATIVE_POOLINGS, check_negative_pooling, masked_response
from soundloc_jax.methods.registry import Method, register

POSITIVE_TERMS = "bavc"  # the column order of `positive_responses`


def positive_columns(positives: str) -> tuple[int, ...]:
  """Columns of `positive_responses` that `positives` ("bavc", "ba", ...) names;
  ValueError unless it is a non-empty string of distinct letters from "bavc"."""
  if (not isinstance(positives, str) or not positives or len(set(positives)) != len(positives)
      or set(positives) - set(POSITIVE_TERMS)):
    raise ValueError(f"hardpos_loss: positives {positives!r} must be distinct letters of "
                     f"{POSITIVE_TERMS!r} (b: base pair, a: audio neighbour, v: visual "
                     "neighbour, c: both), e.g. 'bavc' or 'ba'")
  return tuple(POSITIVE_TERMS.index(t) for t in positives)


def positive_responses(visual_features, audio_embedding, *, epsilon=0.65, mask_tau=0.03):
  """`[B, 4]` masked responses in the order (P_b, P_a, P_v, P_c) (module docstring)."""
  v = visual_features.astype(jnp.float32)
  a = audio_embedding.astype(jnp.float32)
  # maps[b, t, s] = alpha(audio slot t, image slot s) of row b.
  maps = jnp.einsum("bshwd,btd->btshw", v, a)
  pos = masked_response(maps, jax.nn.log_sigmoid((maps - epsilon) / mask_tau))  # [B, t, s]
  # (t, s): (0, 0) = P_b, (1, 0) = P_a, (0, 1) = P_v, (1, 1) = P_c.
  return jnp.stack([pos[:, 0, 0], pos[:, 1, 0], pos[:, 0, 1], pos[:, 1, 1]], axis=1)


def negative_scores(visual_features, audio_embedding, *, pooling="mean", epsilon=0.65,
                    mask_tau=0.03):
  """`[B, B]`: [i, l] = pooled alpha(A_i, V_l) over the base images: the spatial
  mean, or ("masked") the soft-masked response."""
  base_image = visual_features[:, 0].astype(jnp.float32)
  base_audio = audio_embedding[:, 0].astype(jnp.float32)
  if pooling == "mean":  # the mean over patches commutes with the dot product
    return jnp.einsum("ld,id->il", jnp.mean(base_image, axis=(1, 2)), base_audio)
  maps = jnp.einsum("lhwd,id->ilhw", base_image, base_audio)
  return masked_response(maps, jax.nn.log_sigmoid((maps - epsilon) / mask_tau))


def hardpos_loss(visual_features, audio_embedding, negative_mask, *, epsilon=0.65,
                 mask_tau=0.03, temperature=0.07, negative_pooling="mean", positives="bavc",
                 neighbour_gradient=True, detached=""):
  """HardPos Eq. 5-6 (rules in the module docstring). Returns `(loss, aux)`."""
  if negative_pooling not in NEGATIVE_POOLINGS:
    raise ValueError(f"hardpos_loss: negative_pooling {negative_pooling!r} not in "
                     f"{NEGATIVE_POOLINGS}")
  columns = positive_columns(positives)
  if not neighbour_gradient:
    stop_slot1 = lambda x: jnp.concatenate(  # noqa: E731
        [x[:, :1], jax.lax.stop_gradient(x[:, 1:])], axis=1)
    visual_features, audio_embedding = stop_slot1(visual_features), stop_slot1(audio_embedding)
  positives = positive_responses(visual_features, audio_embedding, epsilon=epsilon,
                                 mask_tau=mask_tau)
  if detached:
    stopped = jnp.asarray([t in detached for t in POSITIVE_TERMS])
    positives = jnp.where(stopped, jax.lax.stop_gradient(positives), positives)
  negatives = negative_scores(visual_features, audio_embedding, pooling=negative_pooling,
                              epsilon=epsilon, mask_tau=mask_tau)
  mask = negative_mask.astype(bool)
  neg_inf = jnp.finfo(jnp.float32).min
  negative_logits = jnp.where(mask, negatives / temperature, neg_inf)
  positive_logits = positives[:, columns] / temperature
  # -log(P / (P + N)) = log(1 + N / P) = softplus(log N - log P): no
  # cancellation between two ~1/T-sized logsumexps when the loss is small.
  per_row = jax.nn.softplus(jax.nn.logsumexp(negative_logits, axis=1)
                            - jax.nn.logsumexp(positive_logits, axis=1))
  loss = jnp.mean(per_row)

  maskf = mask.astype(jnp.float32)
  aux = {
      "positive_response": jnp.mean(positives[:, 0]),
      "hard_positive_response": jnp.mean(positives[:, 1:]),
      "negative_response": jnp.sum(negatives * maskf) / jnp.maximum(jnp.sum(maskf), 1.0),
      "negatives_per_row": jnp.mean(jnp.sum(maskf, axis=1)),
  }
  return loss, aux


# ----------------------------------------------------------------------------
# Registry entry (config.method fields: epsilon, mask_tau, temperature,
# negative_pooling, positives, neighbour_gradient, detached_positives, and for the neighbour sets
# neighbours, neighbours_path, num_neighbours; configs/hard_positive.py).
# Batches carry one audio and one visual neighbour per row
# (`input_pipeline.train_iterator(neighbours=...)`); the model ran on the
# flattened [2B] inputs (`state.model_inputs`), reshaped here.

def _method_loss(outputs, teacher_outputs, batch, cfg, rng):
  del teacher_outputs, rng
  visual, audio = outputs["visual_features"], outputs["audio_embedding"]
  visual = visual.reshape((-1, 2) + visual.shape[1:])
  audio = audio.reshape((-1, 2) + audio.shape[1:])
  return hardpos_loss(visual, audio, batch["negative_mask"], epsilon=cfg.epsilon,
                      mask_tau=cfg.mask_tau, temperature=cfg.temperature,
                      negative_pooling=cfg.negative_pooling, positives=cfg.positives,
                      neighbour_gradient=cfg.neighbour_gradient,
                      detached=cfg.detached_positives)


def _check_config(cfg):
  try:
    positive_columns(cfg.positives)
  except ValueError as e:
    raise ConfigError(f"config.method.positives: {e}") from None
  if set(cfg.detached_positives) - set(POSITIVE_TERMS):
    raise ConfigError(f"config.method.detached_positives={cfg.detached_positives!r} must be "
                      f"letters of {POSITIVE_TERMS!r}")
  check_negative_pooling(cfg)


register(Method("hardpos", _method_loss, needs_neighbours=True, check_config=_check_config))
