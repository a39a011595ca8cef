"""ICL (Lin et al., iterative contrastive learning): its losses as pure,
batched jnp functions, and the registry entries "icl" (Eq. 7, with the
previous-epoch teacher after `init_epochs` epochs of Eq. 3) and "contrastive"
(Eq. 3 alone).

One function per paper equation set; every function takes whole batches, uses
masks instead of variable-size gathers and has no Python loop over samples or
patches, so it jits to a handful of fused ops. All arithmetic is float32 even
when the model computes in bfloat16.

Inputs follow the model contract (`soundloc_jax.models.av_model`):
`visual_features` [B, h, w, d] L2-normalised per patch, `audio_embedding`
[B, d] L2-normalised. Teacher inputs (`teacher_response` [B, h, w] raw cosine
map, `teacher_audio` [B, d]) come from the frozen previous-epoch model and are
wrapped in `stop_gradient` here as well, so no caller can leak a gradient.

ICL (Lin et al.), with the rules the paper leaves open made explicit:
* Eq. 1 min-max normalisation is per sample. A constant map (max - min <=
  `eps`) would be 0/0; it normalises to all zeros and is flagged.
* Eq. 4 positives are patches with normalised teacher response `> delta_v`,
  Eq. 5 negatives those `< delta_v`; a patch exactly at `delta_v` is neither.
  A flagged constant map has every patch positive and none negative (there is
  no localization to learn from, so the row falls back to Eq. 3's phi(V)).
* v+ / v- are means of the L2-normalised patch features over the mask (phi's
  "normalise then average"; the mean is not re-normalised). By default all
  masked patches are used; `sample_fraction < 1` keeps a random subset, as the
  paper's "randomly sample" allows, falling back to the full mask where the
  subset would be empty.
* A row without negative patches simply has no intra term.
* Eq. 6 targets y_ij = <a~_i, a~_j> >= delta_a, with y_ii = 1 forced (it is
  1 mathematically, but float rounding must not drop the true pair).
* When iterating starts: the paper trains Eq. 3 "until convergence". Here the
  teacher is used from epoch `init_epochs` at the earliest, and only once the
  model about to become the teacher passes `teacher_guard` at an epoch end
  (validation retrieval well above chance, and an audio space that does not
  make most pairs inter-frame positives); until then Eq. 3 goes on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from soundloc_jax.errors import ConfigError
from soundloc_jax.methods.registry import Method, register

CONSTANT_MAP_EPS = 1e-6


def normalize_response(response: jax.Array, eps: float = CONSTANT_MAP_EPS):
  """Per-sample min-max normalisation (ICL Eq. 1) of `[B, h, w]` maps.

  Returns `(normalized, is_constant)`; constant maps normalise to zeros.
  """
  response = response.astype(jnp.float32)
  lo = jnp.min(response, axis=(1, 2), keepdims=True)
  hi = jnp.max(response, axis=(1, 2), keepdims=True)
  span = hi - lo
  is_constant = span[:, 0, 0] <= eps
  normalized = jnp.where(span > eps, (response - lo) / jnp.where(span > eps, span, 1.0), 0.0)
  return normalized, is_constant


def masked_mean(features: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `features` [B, h, w, d] over patches where `mask` [B, h, w] is set.

  Rows with an empty mask return zeros (callers decide what that row means).
  """
  mask = mask.astype(jnp.float32)
  total = jnp.einsum("bhwd,bhw->bd", features.astype(jnp.float32), mask)
  count = jnp.sum(mask, axis=(1, 2))[:, None]
  return total / jnp.maximum(count, 1.0)


def pooled_features(features: jax.Array) -> jax.Array:
  """phi(V): the spatial mean of L2-normalised patch features, `[B, d]`."""
  return jnp.mean(features.astype(jnp.float32), axis=(1, 2))


def _info_nce(positive_logits, target_mask, extra_negative_logits=None, extra_mask=None):
  """-mean_i log( sum_j t_ij e^{p_ij} / (sum_j e^{p_ij} + sum_j m_i e^{n_ij}) ).

  Computed with logsumexp; every row must have at least one target.
  """
  neg_inf = jnp.finfo(jnp.float32).min
  numerator = jax.nn.logsumexp(jnp.where(target_mask, positive_logits, neg_inf), axis=1)
  denominator_terms = positive_logits
  if extra_negative_logits is not None:
    extra = jnp.where(extra_mask[:, None], extra_negative_logits, neg_inf)
    denominator_terms = jnp.concatenate([positive_logits, extra], axis=1)
  denominator = jax.nn.logsumexp(denominator_terms, axis=1)
  return jnp.mean(denominator - numerator)


def contrastive_loss(visual_features, audio_embedding, tau):
  """ICL Eq. 3: InfoNCE of phi(V_i) against all audio embeddings of the batch."""
  visual = pooled_features(visual_features)
  logits = visual @ audio_embedding.astype(jnp.float32).T / tau
  return _info_nce(logits, jnp.eye(logits.shape[0], dtype=bool))


def subsample_patches(mask, keep_fraction, rng):
  """A random subset of each row's patches in `mask` [B, h, w]: each patch is
  kept with probability `keep_fraction`; a row whose subset would be empty
  keeps its whole mask."""
  keep = jax.random.uniform(rng, mask.shape) < keep_fraction
  sampled = jnp.logical_and(mask, keep)
  nonempty = jnp.any(sampled, axis=(1, 2), keepdims=True)
  return jnp.where(nonempty, sampled, mask)


def pseudo_label_masks(teacher_response, delta_v, sample_fraction=1.0, rng=None):
  """`(positive_mask, negative_mask, is_constant)` [B, h, w] of Eq. 4 / 5 from
  the teacher's raw response (module docstring); with `sample_fraction < 1`
  each mask is `subsample_patches` of itself, with keys split from `rng`."""
  normalized, is_constant = normalize_response(teacher_response)
  constant = is_constant[:, None, None]
  positive_mask = jnp.logical_or(normalized > delta_v, constant)
  negative_mask = jnp.logical_and(normalized < delta_v, jnp.logical_not(constant))
  if sample_fraction < 1.0:
    if rng is None:
      raise ValueError("icl_loss: sample_fraction < 1 needs an rng")
    pos_rng, neg_rng = jax.random.split(rng)
    positive_mask = subsample_patches(positive_mask, sample_fraction, pos_rng)
    negative_mask = subsample_patches(negative_mask, sample_fraction, neg_rng)
  return positive_mask, negative_mask, is_constant


def icl_loss(visual_features, audio_embedding, teacher_response, teacher_audio, *,
             tau, delta_v, delta_a, use_itr=True, use_intra=True, use_inter=True,
             sample_fraction=1.0, rng=None):
  """ICL Eq. 7 and its Table 2 ablations, batched.

  Flags: `use_itr` replaces phi(V_i) by v+_i (Eq. 4), `use_intra` adds the
  intra-frame negatives v-_i (Eq. 5) to the denominator, `use_inter` makes the
  numerator sum over audio neighbours y_ij (Eq. 6). All three off is Eq. 3.

  Returns `(loss, aux)`; aux holds diagnostics (mean positive-patch fraction,
  mean number of inter-frame positives per row, fraction of constant maps).
  """
  teacher_response = jax.lax.stop_gradient(teacher_response)
  teacher_audio = jax.lax.stop_gradient(teacher_audio).astype(jnp.float32)
  audio = audio_embedding.astype(jnp.float32)
  batch = audio.shape[0]

  positive_mask, negative_mask, is_constant = pseudo_label_masks(
      teacher_response, delta_v, sample_fraction, rng)

  if use_itr:
    v_pos = masked_mean(visual_features, positive_mask)
  else:
    v_pos = pooled_features(visual_features)
  positive_logits = v_pos @ audio.T / tau

  eye = jnp.eye(batch, dtype=bool)
  if use_inter:
    targets = jnp.logical_or(teacher_audio @ teacher_audio.T >= delta_a, eye)
  else:
    targets = eye

  if use_intra:
    v_neg = masked_mean(visual_features, negative_mask)
    has_negative = jnp.any(negative_mask, axis=(1, 2))
    loss = _info_nce(positive_logits, targets, v_neg @ audio.T / tau, has_negative)
  else:
    loss = _info_nce(positive_logits, targets)

  aux = {
      "positive_patch_fraction": jnp.mean(positive_mask.astype(jnp.float32)),
      "inter_positives_per_row": jnp.mean(jnp.sum(targets, axis=1).astype(jnp.float32)),
      "constant_map_fraction": jnp.mean(is_constant.astype(jnp.float32)),
  }
  return loss, aux


# ----------------------------------------------------------------------------
# Registry entries (config.method fields: tau, delta_v, delta_a, use_itr,
# use_intra, use_inter, init_epochs, sample_fraction, teacher_guard*;
# configs/iterative.py).

def _contrastive_method_loss(outputs, teacher_outputs, batch, cfg, rng):
  del teacher_outputs, batch, rng
  return contrastive_loss(outputs["visual_features"], outputs["audio_embedding"], cfg.tau), {}


def _icl_method_loss(outputs, teacher_outputs, batch, cfg, rng):
  if teacher_outputs is None:  # initialisation epochs: Eq. 3
    return _contrastive_method_loss(outputs, None, batch, cfg, rng)
  return icl_loss(
      outputs["visual_features"], outputs["audio_embedding"],
      teacher_outputs["response"], teacher_outputs["audio_embedding"],
      tau=cfg.tau, delta_v=cfg.delta_v, delta_a=cfg.delta_a, use_itr=cfg.use_itr,
      use_intra=cfg.use_intra, use_inter=cfg.use_inter,
      sample_fraction=cfg.sample_fraction, rng=rng)


def _icl_teacher_active(epoch, cfg):
  uses_pseudo_labels = cfg.use_itr or cfg.use_intra or cfg.use_inter
  return bool(uses_pseudo_labels and epoch >= cfg.init_epochs)


def inter_positive_rate(audio: np.ndarray, delta_a: float) -> float:
  """The fraction of pairs of different clips whose audio cosine reaches
  `delta_a` (Eq. 6's inter-frame positives), over L2-normalised `audio`
  `[N, d]`: a batch of B rows would get about rate * (B - 1) extra positives
  per row."""
  a = np.asarray(audio, np.float32)
  n = a.shape[0]
  if n < 2:
    return 0.0
  cos = a @ a.T
  return float((np.sum(cos >= delta_a) - np.sum(np.diag(cos) >= delta_a)) / (n * (n - 1)))


def teacher_guard(metrics: dict, audio, cfg) -> tuple[bool, str]:
  """ICL's guard (the paper trains Eq. 3 "until convergence" before iterating):
  the model about to become the teacher must find each validation sound's
  own image well above chance, median rank <= `teacher_guard_rank` x N
  (chance: about N / 2), and its audio space must not make most pairs
  positive, inter-positive rate <= `teacher_guard_max_inter`. An untrained
  teacher fails both: its ranks are at chance and its audio cosines all pass
  delta_a, which turns Eq. 7 trivial (every pair an inter-frame positive).
  The median rank, not R@1 / R@5: with many clips per class the true image
  competes with its class-mates, so top-k hits stay few even for a good
  model (the demo localizes at pointing 0.9 with R@5 0.03), while the median
  rank falls steadily as a model learns. `teacher_guard=False` starts at
  `init_epochs` whatever the model."""
  rate = inter_positive_rate(audio, cfg.delta_a)
  rank, n = float(metrics["median_rank"]), int(metrics["n"])
  retrieves = rank <= cfg.teacher_guard_rank * n
  separates = rate <= cfg.teacher_guard_max_inter
  report = (f"validation median rank {rank:g} of {n} (chance ~{(n + 1) / 2:g}; at most "
            f"{cfg.teacher_guard_rank:.0%} of n: {'ok' if retrieves else 'no'}); audio pairs "
            f"with cosine >= delta_a {cfg.delta_a:g}: {rate:.1%} (at most "
            f"{cfg.teacher_guard_max_inter:.0%}: {'ok' if separates else 'no'})")
  return (retrieves and separates) or not cfg.teacher_guard, report


def _check_icl_config(cfg):
  for key in ("teacher_guard_rank", "teacher_guard_max_inter"):
    if not 0.0 <= cfg[key] <= 1.0:
      raise ConfigError(f"config.method.{key}={cfg[key]} must be a fraction in [0, 1]")


register(Method("contrastive", _contrastive_method_loss))
register(Method("icl", _icl_method_loss, needs_teacher=True, teacher_active=_icl_teacher_active,
                teacher_guard=teacher_guard, check_config=_check_icl_config))
