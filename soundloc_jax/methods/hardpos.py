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
* Negatives: the batch's BASE examples l with `negative_mask[i, l]`. Which
  side of the pair they share with the positives is `negative_anchor`:
  - `"audio"` (Eq. 5 as written): the base audio with the other images,
    (A_i, V_l). P_a and P_c use another audio (A_j), so the loss can be lowered
    by giving each audio its own overall response level with no localization
    at all (docs: the HardPos anchor study); P_b and P_v share A_i.
  - `"image"` (the direction of LVS's released training code): the other
    audios with the base image, (A_l, V_i). P_b and P_a share V_i; P_v and
    P_c use another image (V_k), the mirror shortcut for those two.
  - `"both"`: every positive meets negatives that share its anchor. An
    image-anchored row holds P_b and P_a against (A_l, V_i); an
    audio-anchored row holds P_b and P_v against (A_i, V_l). P_c = (A_j, V_k)
    shares neither base; it gets a third row anchored on its own audio,
    against (A_j, V_l) for the same l (the audio neighbour is a class-mate of
    i, so i's negatives stand in for its own, to the extent mining is right).
    Putting P_c in either base row would reopen one of the two shortcuts.
    The loss averages the rows that hold at least one selected positive, so
    `positives="b"` with `"both"` is a symmetric InfoNCE over P_b. The
    configs default to `"both"` (`hardpos_loss` itself to Eq. 5's `"audio"`);
    the evidence is in docs/results.md (HardPos negatives' anchor).
  Each negative is scored by the plain spatial mean of its map (Eq. 5,
  `negative_pooling="mean"`) or, with `"masked"`, by the soft-masked response
  with its own mask, as the positives (what LVS's released code does). Eq.
  4's complement of P_iA u P_iV would contain i itself; the base pair is the
  positive, so the host-built mask must exclude l = i as well (the
  pipeline's does). The neighbours' images are not negatives of other rows.
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
  their gradient is a pull toward the base pair alone
  (docs/notes/2026-11-28-hardpos-on-the-demo.md).
* `detached` (default "", none): positives (letters of "bavc") whose logit
  enters P_i without a gradient, a diagnostic of which term drives training
  (scripts/hardpos_detached_pa.py; not in the paper).
* L = -mean_i log(P_i / (P_i + N_i)) (Eq. 6), computed per row as
  softplus(logsumexp(negative logits) - logsumexp(positive logits)). A row
  without negatives contributes exactly 0. `hardpos_objective` is this step
  alone, on pooled responses, so a test or a diagnostic can add per-audio
  levels to them.

`aux` holds scalar diagnostics: the mean base response P_b, the mean of the
three hard-positive responses, the mean negative score over masked-in pairs
(of every negative set the anchor uses), and the mean number of negatives per
row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from soundloc_jax.errors import ConfigError
from soundloc_jax.methods.lvs import NEGATIVE_POOLINGS, check_negative_pooling, masked_response
from soundloc_jax.methods.registry import Method, register

POSITIVE_TERMS = "bavc"  # the column order of `positive_responses`
NEGATIVE_ANCHORS = ("audio", "image", "both")
# "both": the positives (columns of "bavc") each anchored row may hold, and the
# negative set it is contrasted with (keys of `negative_scores`' output).
_BOTH_ROWS = (((0, 1), "image"), ((0, 2), "audio"), ((3,), "neighbour_audio"))


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


def contrastive_rows(negative_anchor: str, positives: str) -> tuple:
  """The rows of the loss, each `(positive columns, negative set)`, for an
  anchor and a `positives` string (module docstring); ValueError on a bad one."""
  if negative_anchor not in NEGATIVE_ANCHORS:
    raise ValueError(f"hardpos_loss: negative_anchor {negative_anchor!r} not in "
                     f"{NEGATIVE_ANCHORS}")
  columns = positive_columns(positives)
  if negative_anchor != "both":
    return ((columns, negative_anchor),)
  return tuple((tuple(c for c in columns if c in group), key) for group, key in _BOTH_ROWS
               if set(columns) & set(group))


def negative_scores(visual_features, audio_embedding, sets=("audio",), *, pooling="mean",
                    epsilon=0.65, mask_tau=0.03) -> dict:
  """`{set: [B, B]}` pooled responses of the negative pairs (the spatial mean,
  or with "masked" the soft-masked response) for each set named:
    "audio"            [i, l] = alpha(A_i, V_l)   base audio, other base images
    "image"            [i, l] = alpha(A_l, V_i)   other base audios, base image
    "neighbour_audio"  [i, l] = alpha(A_j, V_l)   row i's audio neighbour, base images
  """
  images = visual_features[:, 0].astype(jnp.float32)  # V_l, [B, h, w, d]
  out = {}
  if "audio" in sets or "image" in sets:  # one [B, B] serves both: a transpose
    base = _pooled_scores(images, audio_embedding[:, 0], pooling, epsilon, mask_tau)
    out.update({"audio": base, "image": base.T})
  if "neighbour_audio" in sets:
    out["neighbour_audio"] = _pooled_scores(images, audio_embedding[:, 1], pooling, epsilon,
                                            mask_tau)
  unknown = set(sets) - {"audio", "image", "neighbour_audio"}
  if unknown:
    raise ValueError(f"negative_scores: unknown negative set(s) {sorted(unknown)}")
  return {key: out[key] for key in sets}


def _pooled_scores(images, audio, pooling, epsilon, mask_tau):
  """[a, l] = pooled alpha(audio[a], images[l])."""
  audio = audio.astype(jnp.float32)
  if pooling == "mean":  # the mean over patches commutes with the dot product
    return jnp.einsum("ld,ad->al", jnp.mean(images, axis=(1, 2)), audio)
  maps = jnp.einsum("lhwd,ad->alhw", images, audio)
  return masked_response(maps, jax.nn.log_sigmoid((maps - epsilon) / mask_tau))


def hardpos_objective(positive_scores, negatives: dict, negative_mask, rows, temperature):
  """Eq. 6 on pooled responses: `positive_scores` [B, 4] (P_b, P_a, P_v, P_c),
  `negatives` {set: [B, B]}, `rows` from `contrastive_rows`. The mean over
  examples of the mean over rows of softplus(lse(negatives) - lse(positives))."""
  mask = jnp.asarray(negative_mask).astype(bool)
  neg_inf = jnp.finfo(jnp.float32).min
  per_row = []
  for columns, key in rows:  # at most 3 rows, a static structure
    negative_logits = jnp.where(mask, negatives[key] / temperature, neg_inf)
    positive_logits = positive_scores[:, list(columns)] / temperature
    # -log(P / (P + N)) = log(1 + N / P) = softplus(log N - log P): no
    # cancellation between two ~1/T-sized logsumexps when the loss is small.
    per_row.append(jax.nn.softplus(jax.nn.logsumexp(negative_logits, axis=1)
                                   - jax.nn.logsumexp(positive_logits, axis=1)))
  return jnp.mean(sum(per_row) / len(per_row))


def hardpos_loss(visual_features, audio_embedding, negative_mask, *, epsilon=0.65,
                 mask_tau=0.03, temperature=0.07, negative_pooling="mean", positives="bavc",
                 neighbour_gradient=True, detached="", negative_anchor="audio"):
  """HardPos Eq. 5-6 (rules in the module docstring). Returns `(loss, aux)`."""
  if negative_pooling not in NEGATIVE_POOLINGS:
    raise ValueError(f"hardpos_loss: negative_pooling {negative_pooling!r} not in "
                     f"{NEGATIVE_POOLINGS}")
  rows = contrastive_rows(negative_anchor, positives)
  if not neighbour_gradient:
    stop_slot1 = lambda x: jnp.concatenate(  # noqa: E731
        [x[:, :1], jax.lax.stop_gradient(x[:, 1:])], axis=1)
    visual_features, audio_embedding = stop_slot1(visual_features), stop_slot1(audio_embedding)
  positive_scores = positive_responses(visual_features, audio_embedding, epsilon=epsilon,
                                       mask_tau=mask_tau)
  if detached:
    stopped = jnp.asarray([t in detached for t in POSITIVE_TERMS])
    positive_scores = jnp.where(stopped, jax.lax.stop_gradient(positive_scores), positive_scores)
  sets = tuple(dict.fromkeys(key for _, key in rows))
  negatives = negative_scores(visual_features, audio_embedding, sets, pooling=negative_pooling,
                              epsilon=epsilon, mask_tau=mask_tau)
  loss = hardpos_objective(positive_scores, negatives, negative_mask, rows, temperature)

  maskf = jnp.asarray(negative_mask).astype(jnp.float32)
  pairs = jnp.maximum(jnp.sum(maskf), 1.0)
  aux = {
      "positive_response": jnp.mean(positive_scores[:, 0]),
      "hard_positive_response": jnp.mean(positive_scores[:, 1:]),
      "negative_response": sum(jnp.sum(negatives[k] * maskf) for k in sets) / (pairs * len(sets)),
      "negatives_per_row": jnp.mean(jnp.sum(maskf, axis=1)),
  }
  return loss, aux


def level_diagnostics(positive_scores, negatives: dict, negative_mask, rows, temperature) -> dict:
  """The per-audio level shortcut, measured on one batch's pooled responses
  (`positive_scores` [B, 4]; `negatives` with all three sets of
  `negative_scores`; `rows` the run's `contrastive_rows`).

  An audio's level is its mean response over the batch's base images: row
  i's base audio A_i from the "audio" set, its neighbour A_j from the
  "neighbour_audio" set. Returns float32 scalars:
    `level_spread`       std of the base audios' levels;
    `level_corr`         correlation over rows of P_a - P_b with
                         level(A_j) - level(A_i) (1.0: P_a's margin is all level);
    `loss`               Eq. 6 as trained;
    `loss_without_levels`  Eq. 6 after subtracting from every response the
                         level of its audio;
    `loss_chance`        Eq. 6 when every response is equal.
  """
  mask = jnp.asarray(negative_mask).astype(bool)
  base_level = jnp.mean(negatives["audio"], axis=1)             # A_i
  neighbour_level = jnp.mean(negatives["neighbour_audio"], axis=1)  # A_j
  shift = jnp.stack([base_level, neighbour_level, base_level, neighbour_level], axis=1)
  levelled = {"audio": negatives["audio"] - base_level[:, None],
              "image": negatives["image"] - base_level[None, :],  # [i, l] holds A_l
              "neighbour_audio": negatives["neighbour_audio"] - neighbour_level[:, None]}
  margin = positive_scores[:, 1] - positive_scores[:, 0]
  gap = neighbour_level - base_level
  corr = jnp.sum((margin - margin.mean()) * (gap - gap.mean())) / jnp.maximum(
      jnp.sqrt(jnp.sum((margin - margin.mean()) ** 2) * jnp.sum((gap - gap.mean()) ** 2)), 1e-12)
  flat = {k: jnp.zeros_like(v) for k, v in negatives.items()}
  objective = lambda pos, neg: hardpos_objective(pos, neg, mask, rows, temperature)  # noqa: E731
  return {"level_spread": jnp.std(base_level), "level_corr": corr,
          "loss": objective(positive_scores, negatives),
          "loss_without_levels": objective(positive_scores - shift, levelled),
          "loss_chance": objective(jnp.zeros_like(positive_scores), flat)}


# ----------------------------------------------------------------------------
# Registry entry (config.method fields: epsilon, mask_tau, temperature,
# negative_pooling, positives, neighbour_gradient, detached_positives,
# negative_anchor, and for the neighbour sets
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
                      detached=cfg.detached_positives,
                      negative_anchor=cfg.negative_anchor)


def _check_config(cfg):
  try:
    positive_columns(cfg.positives)
  except ValueError as e:
    raise ConfigError(f"config.method.positives: {e}") from None
  if set(cfg.detached_positives) - set(POSITIVE_TERMS):
    raise ConfigError(f"config.method.detached_positives={cfg.detached_positives!r} must be "
                      f"letters of {POSITIVE_TERMS!r}")
  if cfg.negative_anchor not in NEGATIVE_ANCHORS:
    raise ConfigError(f"config.method.negative_anchor={cfg.negative_anchor!r} is not one of "
                      f"{NEGATIVE_ANCHORS}")
  check_negative_pooling(cfg)


register(Method("hardpos", _method_loss, needs_neighbours=True, check_config=_check_config))
