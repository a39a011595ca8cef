"""ICL x HardPos: the previous epoch's pseudo-labels (ICL Eq. 4-5) and mined
semantic positives (HardPos Eq. 4-5) in one loss, as pure, batched jnp
functions, and the registry entry "icl_hardpos" (needs the teacher AND
neighbour batches). Whole batches, masks instead of gathers, no Python loop
over samples or patches, float32 arithmetic whatever the compute dtype.

Inputs (the neighbour layout of `input_pipeline.train_iterator`, reshaped
from the model's flattened `[2B]` outputs by the registry entry):
  `visual_features` [B, 2, h, w, d]  slot 0: base image V_i, slot 1: the
                                     sampled visual neighbour's image V_k
  `audio_embedding` [B, 2, d]        slot 0: base audio a_i, slot 1: the
                                     sampled audio neighbour's audio A_j
  `teacher_visual`, `teacher_audio`  the same from the frozen previous-epoch
                                     model (None: no teacher, see below);
                                     stop-gradiented here as well
  `negative_mask`   [B, B] bool      [i, l]: base example l is outside both of
                                     i's neighbour sets and not i (HardPos Eq. 4)
  `audio_neighbour_mask` [B, B] bool [i, l]: l is in i's mined audio set
                                     (only read with inter_positives="mined")

The rules (docs/methods.md "ICL x HardPos" says why each was chosen):
* Regions. The teacher's cosine map of a pair (audio x, image y), min-max
  normalised per map (ICL Eq. 1), gives the pair's positive region (> delta_v,
  Eq. 4) and background (< delta_v, Eq. 5), exactly as `icl.pseudo_label_masks`
  (constant maps: all positive, no background; `sample_fraction`). The pooled
  feature of a region is the mean of the L2-normalised patch features over it
  (ICL's phi, not re-normalised), and a pair's score is its dot product with
  the audio embedding. v+_i, v-_i are base image i's regions for its own
  sound a_i (the teacher map of (a_i, V_i)).
* The four positives of row i (HardPos's P_b, P_a, P_v, P_c): P_b = v+_i . a_i;
  the mined pairs P_a = (A_j, V_i), P_v = (a_i, V_k), P_c = (A_j, V_k) score
  with `mined_region`:
    "teacher": the region the teacher's map of THAT pair gives (Eq. 4 applied
               to the mined pair), pooled as above;
    "soft":    HardPos's own score, the soft-masked response with the
               student map's own LVS mask (`hardpos.positive_responses`).
  `positives` (letters of "bavc", always holding "b") selects them.
* Eq. 6's batch relation, `inter_positives`: which other base examples l of
  the batch are extra positives of row i, targets Y[i, l] (Y[i, i] = 1 always):
    "teacher": kept, <a~_i, a~_l> >= delta_a on the teacher's audio (ICL);
    "mined":   replaced by the mined audio relation, l in i's audio set P_iA;
    "off":     none.
  A column is a batch negative when `negative_mask` holds and it is not a
  target; every other column (a mined neighbour that is not a target) is
  left out of the row, as HardPos leaves its neighbours out of N_i.
* Background (Eq. 5, `use_intra`): the background of a BASE frame (the only
  frames whose own sound the batch holds) with the batch's audios: in an
  image-anchored row v-_i . a_l for every batch audio a_l (ICL's Eq. 7
  denominator); in an audio-anchored row v-_l . x for every batch image l and
  the row's anchor audio x (a_i, or A_j in P_c's row). A frame whose map has
  no background (a constant map) has no such term. The mined audio A_j gets
  no background term in the image row: v-_i . A_j there gives A_j one term
  more than the batch's audios, and per-audio levels then lower the loss a
  little (the level test found it; docs/notes/2026-12-08-icl-hardpos.md).
* Rows (`negative_anchor`, what the negatives share with the positives):
    "image": one row anchored on V_i (ICL's direction): positives
             {v+_i . a_l : Y[i, l]} and the selected mined terms, negatives
             v+_i . a_l, background v-_i . a_l;
    "audio": one row anchored on a_i (HardPos Eq. 5's direction): positives
             {v+_l . a_i : Y[i, l]} and the mined terms, negatives
             v+_l . a_i, background v-_l . a_i;
    "both":  an image-anchored row with P_b, P_a (and Y), an audio-anchored
             row with P_b, P_v (and Y), and a row anchored on A_j for P_c,
             with negatives v+_l . A_j and background v-_l . A_j (i's
             negative mask stands in for the neighbour's own, as HardPos).
  With one anchor, the mined terms that use another audio (image anchor: no,
  it is P_v, P_c that use another image; audio anchor: P_a, P_c use another
  audio) open HardPos's per-side level shortcut (tests/icl_hardpos_losses_test.py).
* Each row: -log(sum_pos e^{s/tau} / (sum_pos e^{s/tau} + sum_neg e^{s/tau}
  + sum_background e^{s/tau})) (ICL Eq. 7's form, HardPos Eq. 6's with the
  positives in the denominator), computed as softplus(lse(neg, background)
  - lse(pos)); a row with no negative term is exactly 0. The loss is the mean
  over examples of the mean over the rows that hold a selected positive.
* Without a teacher (the first `init_epochs`, or `use_itr=False`) every
  teacher region is the whole image (Eq. 3's phi(V)) and, without a teacher,
  there is no background and no teacher relation: the loss becomes Eq. 3
  with the mined positives (and the mined relation, which needs no teacher).

`aux`: the base pair's score, the mean of the selected mined scores, the mean
positive-patch fraction of the base teacher maps, the batch targets per row,
the batch negatives per row and the fraction of constant base maps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from soundloc_jax.errors import ConfigError
from soundloc_jax.methods import hardpos, icl
from soundloc_jax.methods.registry import Method, register

MINED_REGIONS = ("teacher", "soft")
INTER_POSITIVES = ("teacher", "mined", "off")
NEGATIVE_ANCHORS = hardpos.NEGATIVE_ANCHORS  # ("audio", "image", "both")
MINED_TERMS = "avc"  # the columns of the "mined" scores, in this order

# A row is a tuple of (score key, role) blocks. Score keys (`pooled_scores`),
# each [B, M] with its row-i meaning:
#   "S"   [i, l] = v+_i . a_l       "ST"  [i, l] = v+_l . a_i
#   "I"   [i, l] = v-_i . a_l       "IT"  [i, l] = v-_l . a_i
#   "Sn"  [i, l] = v+_l . A_j(i)    "In"  [i, l] = v-_l . A_j(i)
#   "mined" [i, t] = P_a, P_v, P_c (t = 0, 1, 2)
# Roles: "pos" (targets Y, or the whole mined column), "neg" (batch
# negatives), "bg" (backgrounds, where that frame has one).


def contrastive_rows(negative_anchor: str, positives: str, use_intra: bool) -> tuple:
  """The rows of the loss (module docstring) as tuples of `(key, role)`
  blocks, `("mined", t)` naming mined column t; ValueError on a bad anchor or
  `positives` (distinct letters of "bavc" holding "b")."""
  if negative_anchor not in NEGATIVE_ANCHORS:
    raise ValueError(f"icl_hardpos_loss: negative_anchor {negative_anchor!r} not in "
                     f"{NEGATIVE_ANCHORS}")
  hardpos.positive_columns(positives)  # the same letters as HardPos
  if "b" not in positives:
    raise ValueError(f"icl_hardpos_loss: positives {positives!r} must hold 'b', the base "
                     "pair (ICL's positive)")
  mined = lambda terms: tuple(("mined", MINED_TERMS.index(t))  # noqa: E731
                              for t in MINED_TERMS if t in terms and t in positives)
  image_bg = (("I", "bg"),)
  if negative_anchor == "image":
    return ((("S", "pos"), *mined("avc"), ("S", "neg")) + (image_bg if use_intra else ()),)
  if negative_anchor == "audio":
    return ((("ST", "pos"), *mined("avc"), ("ST", "neg"))
            + ((("IT", "bg"),) if use_intra else ()),)
  rows = [(("S", "pos"), *mined("a"), ("S", "neg")) + (image_bg if use_intra else ()),
          (("ST", "pos"), *mined("v"), ("ST", "neg")) + ((("IT", "bg"),) if use_intra else ())]
  if "c" in positives:
    rows.append((*mined("c"), ("Sn", "neg")) + ((("In", "bg"),) if use_intra else ()))
  return tuple(rows)


def _block_mask(key, role, targets, negatives, has_background):
  """bool mask of one block (broadcastable to its scores)."""
  if key == "mined":
    return None
  if role == "pos":
    return targets
  if role == "neg":
    return negatives
  if key == "I":  # row i's own frame
    return has_background[:, None]
  return has_background[None, :]  # "IT", "In": column l's frame


def objective(scores: dict, targets, negatives, has_background, rows, tau):
  """The loss on pooled scores (`pooled_scores`' dict): mean over examples of
  the mean over `rows` of softplus(lse(neg + background) - lse(pos)).
  `targets`, `negatives` [B, B] bool; `has_background` [B] bool."""
  neg_inf = jnp.finfo(jnp.float32).min
  per_row = []
  for row in rows:  # at most 3 rows of at most 5 blocks: a static structure
    pos, neg = [], []
    for key, role in row:
      if key == "mined":
        pos.append(scores["mined"][:, role:role + 1] / tau)
        continue
      logits = scores[key] / tau
      mask = _block_mask(key, role, targets, negatives, has_background)
      (pos if role == "pos" else neg).append(jnp.where(mask, logits, neg_inf))
    if not neg:  # nothing to contrast with
      per_row.append(jnp.zeros(scores["S"].shape[0], jnp.float32))
      continue
    lse = lambda blocks: jax.nn.logsumexp(jnp.concatenate(blocks, axis=1), axis=1)  # noqa
    # -log(P / (P + N)) = softplus(log N - log P). A row whose negatives are
    # all masked out has log N ~ float32 min: softplus gives exactly 0.
    per_row.append(jax.nn.softplus(lse(neg) - lse(pos)))
  return jnp.mean(sum(per_row) / len(per_row))


def _teacher_masks(teacher_visual, teacher_audio, delta_v, sample_fraction, rng):
  """Eq. 4 / 5 masks `[B, t, s, h, w]` of the teacher's map of (audio slot t,
  image slot s), and the constant-map flags `[B, t, s]`."""
  tv = jax.lax.stop_gradient(teacher_visual).astype(jnp.float32)
  ta = jax.lax.stop_gradient(teacher_audio).astype(jnp.float32)
  maps = jnp.einsum("bshwd,btd->btshw", tv, ta)
  b, _, _, h, w = maps.shape
  pos, neg, constant = icl.pseudo_label_masks(maps.reshape(4 * b, h, w), delta_v,
                                              sample_fraction, rng)
  return (pos.reshape(b, 2, 2, h, w), neg.reshape(b, 2, 2, h, w), constant.reshape(b, 2, 2))


def pooled_scores(visual_features, audio_embedding, teacher_visual=None, teacher_audio=None, *,
                  delta_v=0.5, use_itr=True, mined_region="teacher", epsilon=0.65,
                  mask_tau=0.03, sample_fraction=1.0, rng=None) -> tuple[dict, dict]:
  """`(scores, extra)`: the pooled scores of every block (see the key table
  above `contrastive_rows`) and `extra` = {"has_background" [B] bool,
  "positive_patch_fraction", "constant_map_fraction"} (module docstring)."""
  if mined_region not in MINED_REGIONS:
    raise ValueError(f"icl_hardpos_loss: mined_region {mined_region!r} not in {MINED_REGIONS}")
  v = visual_features.astype(jnp.float32)
  a = audio_embedding.astype(jnp.float32)
  b, _, h, w, _ = v.shape
  has_teacher = teacher_visual is not None
  if has_teacher:
    pos, neg, constant = _teacher_masks(teacher_visual, teacher_audio, delta_v,
                                        sample_fraction, rng)
  else:
    pos = jnp.ones((b, 2, 2, h, w), bool)
    neg = jnp.zeros((b, 2, 2, h, w), bool)
    constant = jnp.zeros((b, 2, 2), bool)
  region_pos = pos if (has_teacher and use_itr) else jnp.ones_like(pos)
  # Pooled regions [B, t, s, d]: image slot s over the region of (audio t, image s).
  pooled = lambda masks: (jnp.einsum("bshwd,btshw->btsd", v, masks.astype(jnp.float32))  # noqa
                          / jnp.maximum(jnp.sum(masks, axis=(3, 4)), 1)[..., None])
  r_pos, r_neg = pooled(region_pos), pooled(neg)
  v_pos, v_neg = r_pos[:, 0, 0], r_neg[:, 0, 0]     # v+_i, v-_i  [B, d]
  base, nbr = a[:, 0], a[:, 1]                      # a_i, A_j    [B, d]
  scores = {"S": v_pos @ base.T, "I": v_neg @ base.T, "Sn": nbr @ v_pos.T,
            "In": nbr @ v_neg.T}
  scores["ST"], scores["IT"] = scores["S"].T, scores["I"].T
  if mined_region == "teacher":
    # (t, s): P_a = (1, 0), P_v = (0, 1), P_c = (1, 1).
    mined = [jnp.sum(r_pos[:, t, s] * a[:, t], axis=1) for t, s in ((1, 0), (0, 1), (1, 1))]
    scores["mined"] = jnp.stack(mined, axis=1)
  else:
    scores["mined"] = hardpos.positive_responses(v, a, epsilon=epsilon, mask_tau=mask_tau)[:, 1:]
  extra = {"has_background": jnp.any(neg[:, 0, 0], axis=(1, 2)),
           "positive_patch_fraction": jnp.mean(region_pos[:, 0, 0].astype(jnp.float32)),
           "constant_map_fraction": jnp.mean(constant[:, 0, 0].astype(jnp.float32))}
  return scores, extra


def batch_targets(inter_positives, batch_size, teacher_audio=None, delta_a=0.99,
                  audio_neighbour_mask=None):
  """Y [B, B] bool (module docstring), Y[i, i] = 1; "teacher" without a teacher
  is the identity."""
  if inter_positives not in INTER_POSITIVES:
    raise ValueError(f"icl_hardpos_loss: inter_positives {inter_positives!r} not in "
                     f"{INTER_POSITIVES}")
  eye = jnp.eye(batch_size, dtype=bool)
  if inter_positives == "teacher" and teacher_audio is not None:
    ta = jax.lax.stop_gradient(teacher_audio[:, 0]).astype(jnp.float32)
    return jnp.logical_or(ta @ ta.T >= delta_a, eye)
  if inter_positives == "mined":
    if audio_neighbour_mask is None:
      raise ValueError("icl_hardpos_loss: inter_positives='mined' needs the batch's "
                       "audio_neighbour_mask")
    return jnp.logical_or(jnp.asarray(audio_neighbour_mask).astype(bool), eye)
  return eye


def icl_hardpos_loss(visual_features, audio_embedding, negative_mask, teacher_visual=None,
                     teacher_audio=None, audio_neighbour_mask=None, *, tau=0.07, delta_v=0.5,
                     delta_a=0.99, use_itr=True, use_intra=True, inter_positives="teacher",
                     mined_region="teacher", positives="bavc", negative_anchor="both",
                     epsilon=0.65, mask_tau=0.03, sample_fraction=1.0, rng=None):
  """ICL x HardPos (module docstring). Returns `(loss, aux)`."""
  rows = contrastive_rows(negative_anchor, positives, use_intra and teacher_visual is not None)
  scores, extra = pooled_scores(visual_features, audio_embedding, teacher_visual, teacher_audio,
                                delta_v=delta_v, use_itr=use_itr, mined_region=mined_region,
                                epsilon=epsilon, mask_tau=mask_tau,
                                sample_fraction=sample_fraction, rng=rng)
  batch = visual_features.shape[0]
  targets = batch_targets(inter_positives, batch, teacher_audio, delta_a, audio_neighbour_mask)
  negatives = jnp.logical_and(jnp.asarray(negative_mask).astype(bool), ~targets)
  loss = objective(scores, targets, negatives, extra["has_background"], rows, tau)
  chosen = [MINED_TERMS.index(t) for t in MINED_TERMS if t in positives]
  aux = {
      "positive_response": jnp.mean(jnp.diagonal(scores["S"])),
      "hard_positive_response": (jnp.mean(scores["mined"][:, jnp.asarray(chosen)]) if chosen
                                 else jnp.zeros((), jnp.float32)),
      "positive_patch_fraction": extra["positive_patch_fraction"],
      "inter_positives_per_row": jnp.mean(jnp.sum(targets, axis=1).astype(jnp.float32)),
      "negatives_per_row": jnp.mean(jnp.sum(negatives, axis=1).astype(jnp.float32)),
      "constant_map_fraction": extra["constant_map_fraction"],
  }
  return loss, aux


# ----------------------------------------------------------------------------
# Registry entry (config.method fields: ICL's tau, delta_v, delta_a, use_itr,
# use_intra, init_epochs, sample_fraction, teacher_guard*; HardPos's
# epsilon, mask_tau, positives, negative_anchor, neighbours, neighbours_path,
# num_neighbours; and its own inter_positives, mined_region;
# configs/icl_hardpos.py). The model ran on the flattened [2B] neighbour
# inputs, the teacher too (`train.make_train_step`); reshaped here.

def _pairs(out):
  visual, audio = out["visual_features"], out["audio_embedding"]
  return (visual.reshape((-1, 2) + visual.shape[1:]), audio.reshape((-1, 2) + audio.shape[1:]))


def _method_loss(outputs, teacher_outputs, batch, cfg, rng):
  visual, audio = _pairs(outputs)
  teacher_visual, teacher_audio = _pairs(teacher_outputs) if teacher_outputs else (None, None)
  return icl_hardpos_loss(
      visual, audio, batch["negative_mask"], teacher_visual, teacher_audio,
      batch.get("audio_neighbour_mask"), tau=cfg.tau, delta_v=cfg.delta_v,
      delta_a=cfg.delta_a, use_itr=cfg.use_itr, use_intra=cfg.use_intra,
      inter_positives=cfg.inter_positives, mined_region=cfg.mined_region,
      positives=cfg.positives, negative_anchor=cfg.negative_anchor, epsilon=cfg.epsilon,
      mask_tau=cfg.mask_tau, sample_fraction=cfg.sample_fraction, rng=rng)


def _teacher_active(epoch, cfg):
  uses_teacher = (cfg.use_itr or cfg.use_intra or cfg.inter_positives == "teacher"
                  or cfg.mined_region == "teacher")
  return bool(uses_teacher and epoch >= cfg.init_epochs)


def teacher_guard(metrics: dict, audio, cfg) -> tuple[bool, str]:
  """ICL's guard (`icl.teacher_guard`); its audio-pair check guards Eq. 6's
  teacher relation, so with `inter_positives` "mined" or "off" only the
  median-rank check decides."""
  ready, report = icl.teacher_guard(metrics, audio, cfg)
  if cfg.inter_positives == "teacher" or not cfg.teacher_guard:
    return ready, report
  rank, n = float(metrics["median_rank"]), int(metrics["n"])
  return (rank <= cfg.teacher_guard_rank * n,
          f"{report} [only the rank decides: inter_positives={cfg.inter_positives!r}]")


def _check_config(cfg):
  for key, allowed in (("inter_positives", INTER_POSITIVES), ("mined_region", MINED_REGIONS),
                       ("negative_anchor", NEGATIVE_ANCHORS)):
    if cfg[key] not in allowed:
      raise ConfigError(f"config.method.{key}={cfg[key]!r} is not one of {allowed}")
  try:
    contrastive_rows(cfg.negative_anchor, cfg.positives, cfg.use_intra)
  except ValueError as e:
    raise ConfigError(f"config.method.positives: {e}") from None
  if not cfg.use_inter and cfg.inter_positives != "off":
    raise ConfigError("config.method.use_inter=False does not switch icl_hardpos's Eq. 6: set "
                      "config.method.inter_positives=off (or teacher / mined)")
  if cfg.detached_positives or not cfg.neighbour_gradient:
    raise ConfigError("config.method.detached_positives / neighbour_gradient are HardPos "
                      "diagnostics that icl_hardpos does not read; leave them at their defaults")
  icl._check_icl_config(cfg)


register(Method("icl_hardpos", _method_loss, needs_teacher=True, needs_neighbours=True,
                teacher_active=_teacher_active, teacher_guard=teacher_guard,
                check_config=_check_config))
