"""icl_hardpos losses vs a slow float64 per-sample reference, and the
negatives' anchor level test of the HardPos anchor study applied to this loss.

The reference is written from the rules of `methods/icl_hardpos.py`'s
docstring, not from its code: per row it forms every teacher map with Python
loops, min-max normalises it (ICL Eq. 1), splits its patches at delta_v
(Eq. 4 / 5), averages the student's patch features over each region, builds
the row's positive, negative and background terms one by one and takes
-log(P / (P + N + BG)) in float64.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soundloc_jax.configs import icl_hardpos as icl_hardpos_config
from soundloc_jax.errors import ConfigError
from soundloc_jax.methods import icl, icl_hardpos

CONST_EPS = 1e-6


# --------------------------------------------------------------------------
# Slow float64 reference (loops only).
# --------------------------------------------------------------------------

def _dot(u, v):
  return sum(float(x) * float(y) for x, y in zip(u, v))


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def _teacher_regions(tv, ta, delta_v):
  """(positive patches, background patches) of the teacher map of audio `ta`
  with image `tv` [h, w, d]: Eq. 1 per map, > delta_v / < delta_v; a constant
  map is all positive with no background."""
  h, w, _ = tv.shape
  cells = [(u, v) for u in range(h) for v in range(w)]
  values = {c: _dot(ta, tv[c]) for c in cells}
  lo, hi = min(values.values()), max(values.values())
  if hi - lo <= CONST_EPS:
    return cells, []
  norm = {c: (values[c] - lo) / (hi - lo) for c in cells}
  return [c for c in cells if norm[c] > delta_v], [c for c in cells if norm[c] < delta_v]


def _mean_over(image, cells):
  d = image.shape[-1]
  return [sum(float(image[c][k]) for c in cells) / len(cells) for k in range(d)]


def _soft_masked(audio, image, epsilon, mask_tau):
  num = den = 0.0
  h, w, _ = image.shape
  for u in range(h):
    for v in range(w):
      value = _dot(audio, image[u, v])
      m = _sigmoid((value - epsilon) / mask_tau)
      num += m * value
      den += m
  return num / den


def reference_loss(V, A, negative_mask, TV=None, TA=None, audio_mask=None, *, tau=0.07,
                   delta_v=0.5, delta_a=0.99, use_itr=True, use_intra=True,
                   inter_positives="teacher", mined_region="teacher", positives="bavc",
                   negative_anchor="both", epsilon=0.65, mask_tau=0.03):
  V, A = np.asarray(V, np.float64), np.asarray(A, np.float64)
  B, _, h, w, _ = V.shape
  all_cells = [(u, v) for u in range(h) for v in range(w)]
  teacher = TV is not None
  if teacher:
    TV, TA = np.asarray(TV, np.float64), np.asarray(TA, np.float64)

  def regions(i, t, s):
    """Positive region (for scoring) and background of row i's pair (audio
    slot t, image slot s)."""
    if not teacher:
      return all_cells, []
    pos, bg = _teacher_regions(TV[i, s], TA[i, t], delta_v)
    return (pos if use_itr else all_cells), bg

  v_pos, v_bg = [], []
  for i in range(B):
    pos, bg = regions(i, 0, 0)
    v_pos.append(_mean_over(V[i, 0], pos))
    v_bg.append(_mean_over(V[i, 0], bg) if bg else None)
  a = [A[i, 0] for i in range(B)]
  nbr = [A[i, 1] for i in range(B)]

  def mined(i, term):
    t, s = {"a": (1, 0), "v": (0, 1), "c": (1, 1)}[term]
    if mined_region == "soft":
      return _soft_masked(A[i, t], V[i, s], epsilon, mask_tau)
    return _dot(_mean_over(V[i, s], regions(i, t, s)[0]), A[i, t])

  def target(i, l):
    if i == l:
      return True
    if inter_positives == "teacher" and teacher:
      return _dot(TA[i, 0], TA[l, 0]) >= delta_a
    if inter_positives == "mined":
      return bool(audio_mask[i][l])
    return False

  with_bg = use_intra and teacher
  total = 0.0
  for i in range(B):
    selected = [t for t in "avc" if t in positives]
    image_row = {"pos": [], "neg": [], "bg": []}
    for l in range(B):  # anchored on image i: (a_l, v+_i)
      score = _dot(v_pos[i], a[l])
      if target(i, l):
        image_row["pos"].append(score)
      elif negative_mask[i][l]:
        image_row["neg"].append(score)
      if with_bg and v_bg[i] is not None:
        image_row["bg"].append(_dot(v_bg[i], a[l]))

    def audio_row(x, with_targets):  # anchored on audio x: (x, v+_l)
      row = {"pos": [], "neg": [], "bg": []}
      for l in range(B):
        score = _dot(v_pos[l], x)
        if with_targets and target(i, l):
          row["pos"].append(score)
        elif negative_mask[i][l] and not target(i, l):
          row["neg"].append(score)
        if with_bg and v_bg[l] is not None:
          row["bg"].append(_dot(v_bg[l], x))
      return row

    if negative_anchor == "image":
      image_row["pos"] += [mined(i, t) for t in selected]
      rows = [image_row]
    elif negative_anchor == "audio":
      row = audio_row(a[i], True)
      row["pos"] += [mined(i, t) for t in selected]
      rows = [row]
    else:
      image_row["pos"] += [mined(i, t) for t in selected if t == "a"]
      row = audio_row(a[i], True)
      row["pos"] += [mined(i, t) for t in selected if t == "v"]
      rows = [image_row, row]
      if "c" in selected:
        c_row = audio_row(nbr[i], False)
        c_row["pos"] = [mined(i, "c")]
        rows.append(c_row)
    losses = []
    for row in rows:
      p = sum(math.exp(s / tau) for s in row["pos"])
      n = sum(math.exp(s / tau) for s in row["neg"] + row["bg"])
      losses.append(-math.log(p / (p + n)))
    total += sum(losses) / len(losses)
  return total / B


# --------------------------------------------------------------------------
# Inputs.
# --------------------------------------------------------------------------

def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_case(seed, batch=5, h=3, w=3, d=6, delta_v=0.5, delta_a=0.9):
  """Student and teacher features scattered around a shared direction (so
  cosines are close, as early in training), with patches planted near the
  batch's audios (so teacher regions and soft masks are neither all nor
  nothing); teacher audio in clusters (so Eq. 6 finds pairs); one row's base
  teacher image constant in some cases (a constant map); a negative mask and
  an audio-neighbour mask of four kinds. Redrawn until no teacher patch or
  audio pair sits within 1e-4 of its threshold (float32 vs float64)."""
  rng = np.random.default_rng(seed)
  for _ in range(100):
    common = rng.normal(size=d)
    spread = rng.uniform(0.3, 3.0)
    A = _normalize(common + spread * rng.normal(size=(batch, 2, d)))
    V = common + spread * rng.normal(size=(batch, 2, h, w, d))
    planted = rng.random((batch, 2, h, w)) < rng.uniform(0.1, 0.8)
    source = A.reshape(2 * batch, d)[rng.integers(0, 2 * batch, size=(batch, 2, h, w))]
    V = _normalize(np.where(planted[..., None], source + 0.3 * rng.normal(size=V.shape), V))
    centres = _normalize(rng.normal(size=(2, d)))
    TA = _normalize(centres[rng.integers(0, 2, size=(batch, 2))]
                    + 0.3 * rng.normal(size=(batch, 2, d)))
    TV = _normalize(rng.normal(size=(batch, 2, h, w, d)))
    if seed % 3 == 0:
      TV[seed % batch, 0] = TV[seed % batch, 0, 0, 0]  # a constant base map
    maps = np.einsum("bshwd,btd->btshw", TV, TA)
    lo, hi = maps.min(axis=(3, 4), keepdims=True), maps.max(axis=(3, 4), keepdims=True)
    span = hi - lo
    norm = np.where(span > CONST_EPS, (maps - lo) / np.where(span > CONST_EPS, span, 1), 0)
    cos = TA[:, 0] @ TA[:, 0].T
    if np.min(np.abs(norm - delta_v)) > 1e-4 and np.min(np.abs(cos - delta_a)) > 1e-4:
      break
  else:
    raise AssertionError(f"no case away from the thresholds for seed {seed}")
  kind = seed % 4
  if kind == 0:
    mask = rng.random((batch, batch)) < 0.6
  elif kind == 1:  # a row without negatives, a column never used
    mask = rng.random((batch, batch)) < 0.7
    mask[rng.integers(batch)] = False
    mask[:, rng.integers(batch)] = False
  elif kind == 2:
    mask = ~np.eye(batch, dtype=bool)
  else:
    mask = np.zeros((batch, batch), bool)
    mask[0, 1:] = True
  np.fill_diagonal(mask, False)
  audio_mask = (rng.random((batch, batch)) < 0.3) & ~mask
  np.fill_diagonal(audio_mask, False)
  f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
  return f32(V), f32(A), mask, f32(TV), f32(TA), audio_mask


# --------------------------------------------------------------------------
# The loss against the reference.
# --------------------------------------------------------------------------

def _case_kwargs(seed):
  """A spread of settings: every anchor, region, relation and positives subset."""
  kwargs = dict(tau=(0.07, 0.2, 0.5)[seed % 3], delta_a=0.9,
                negative_anchor=icl_hardpos.NEGATIVE_ANCHORS[seed % 3],
                mined_region=icl_hardpos.MINED_REGIONS[seed // 3 % 2],
                inter_positives=icl_hardpos.INTER_POSITIVES[seed // 2 % 3],
                positives=("bavc", "b", "ba", "bv", "bc", "bva")[seed // 5 % 6])
  if seed % 7 == 3:
    kwargs["use_intra"] = False
  if seed % 11 == 4:
    kwargs["use_itr"] = False
  if kwargs["mined_region"] == "soft" and seed % 2:
    kwargs.update(epsilon=0.3, mask_tau=0.1)
  return kwargs


def test_loss_matches_reference_on_many_random_cases():
  values = []
  for seed in range(72):
    V, A, mask, TV, TA, audio_mask = random_case(seed, batch=3 + seed % 4)
    kwargs = _case_kwargs(seed)
    teacher = (TV, TA) if seed % 9 != 8 else (None, None)  # some without a teacher
    loss, aux = icl_hardpos.icl_hardpos_loss(V, A, mask, *teacher, audio_mask, **kwargs)
    expected = reference_loss(V, A, mask, *teacher, audio_mask, **kwargs)
    values.append(expected)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5, atol=1e-6,
                               err_msg=f"seed {seed} {kwargs}")
    assert np.isfinite([float(v) for v in aux.values()]).all()
  assert max(values) > 1.0 and np.median(values) > 0.1  # not a trivially easy set


def test_every_anchor_region_and_relation_matches_reference():
  """Each (anchor, mined region, relation) once on one case, all positives."""
  V, A, mask, TV, TA, audio_mask = random_case(13, batch=5)
  for anchor in icl_hardpos.NEGATIVE_ANCHORS:
    for region in icl_hardpos.MINED_REGIONS:
      for relation in icl_hardpos.INTER_POSITIVES:
        kwargs = dict(tau=0.2, delta_a=0.9, negative_anchor=anchor, mined_region=region,
                      inter_positives=relation)
        loss, _ = icl_hardpos.icl_hardpos_loss(V, A, mask, TV, TA, audio_mask, **kwargs)
        np.testing.assert_allclose(
            float(loss), reference_loss(V, A, mask, TV, TA, audio_mask, **kwargs),
            rtol=2e-5, atol=1e-6, err_msg=str(kwargs))


def test_the_base_pair_alone_with_every_other_sample_negative_is_icl_eq7():
  """positives="b", image anchor, all others negatives: ICL's own Eq. 7 (and
  its Table 2 rows) on the base slot, from `icl.icl_loss`."""
  V, A, _, TV, TA, _ = random_case(5, batch=6)
  mask = ~np.eye(6, dtype=bool)
  response = np.einsum("bhwd,bd->bhw", TV[:, 0], TA[:, 0])
  for use_itr, use_intra, use_inter in ((True, True, True), (True, False, False),
                                        (False, True, True), (True, True, False)):
    ours, _ = icl_hardpos.icl_hardpos_loss(
        V, A, mask, TV, TA, tau=0.2, delta_a=0.9, positives="b", negative_anchor="image",
        use_itr=use_itr, use_intra=use_intra, inter_positives="teacher" if use_inter else "off")
    theirs, _ = icl.icl_loss(V[:, 0], A[:, 0], response, TA[:, 0], tau=0.2, delta_v=0.5,
                             delta_a=0.9, use_itr=use_itr, use_intra=use_intra,
                             use_inter=use_inter)
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-6)


def test_without_a_teacher_it_is_eq3_with_the_mined_positives():
  """No teacher: whole-image regions, no background, no teacher relation; so
  `use_itr` / `use_intra` change nothing and positives="b" with the image
  anchor is ICL's Eq. 3."""
  V, A, _, _, _, audio_mask = random_case(2, batch=5)
  mask = ~np.eye(5, dtype=bool)
  run = lambda **kw: float(icl_hardpos.icl_hardpos_loss(V, A, mask, None, None, audio_mask,  # noqa
                                                        tau=0.2, **kw)[0])
  assert run() == run(use_itr=False, use_intra=False) == run(inter_positives="off")
  np.testing.assert_allclose(run(positives="b", negative_anchor="image"),
                             float(icl.contrastive_loss(V[:, 0], A[:, 0], 0.2)), rtol=1e-6)


def test_rows_without_negatives_give_zero():
  V, A, mask, TV, TA, audio_mask = random_case(7)
  empty = np.zeros_like(mask)
  loss, _ = icl_hardpos.icl_hardpos_loss(V, A, empty, TV, TA, use_intra=False)
  assert float(loss) == 0.0
  assert reference_loss(V, A, empty, TV, TA, use_intra=False) == 0.0
  # With backgrounds the same rows still learn (their Eq. 5 terms).
  assert float(icl_hardpos.icl_hardpos_loss(V, A, empty, TV, TA)[0]) > 0.0


def test_bfloat16_inputs_stay_float32_and_jit_matches_eager():
  V, A, mask, TV, TA, audio_mask = random_case(3)
  as16 = lambda x: jnp.asarray(x, jnp.bfloat16)  # noqa: E731
  loss16, aux = icl_hardpos.icl_hardpos_loss(as16(V), as16(A), mask, as16(TV), as16(TA))
  assert loss16.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in aux.values())
  jitted = jax.jit(icl_hardpos.icl_hardpos_loss,
                   static_argnames=("negative_anchor", "mined_region", "inter_positives"))
  np.testing.assert_allclose(float(jitted(V, A, mask, TV, TA, audio_mask,
                                          inter_positives="mined")[0]),
                             float(icl_hardpos.icl_hardpos_loss(V, A, mask, TV, TA, audio_mask,
                                                                inter_positives="mined")[0]),
                             rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))  # anchors image, audio, both
def test_gradients_match_finite_differences_and_the_teacher_gets_none(seed):
  V, A, mask, TV, TA, audio_mask = random_case(200 + seed, batch=4, h=2, w=2, d=5)
  kwargs = dict(tau=0.2, delta_a=0.9, negative_anchor=icl_hardpos.NEGATIVE_ANCHORS[seed],
                mined_region=("teacher", "soft", "teacher")[seed],
                inter_positives=("teacher", "mined", "off")[seed])
  if kwargs["mined_region"] == "soft":
    kwargs.update(epsilon=0.3, mask_tau=0.1)
  f = lambda v, a, tv, ta: icl_hardpos.icl_hardpos_loss(v, a, mask, tv, ta, audio_mask,  # noqa
                                                        **kwargs)[0]
  gv, ga, gtv, gta = jax.grad(f, argnums=(0, 1, 2, 3))(V, A, TV, TA)
  assert np.all(np.asarray(gtv) == 0) and np.all(np.asarray(gta) == 0)
  rng = np.random.default_rng(seed)
  for _ in range(3):
    dv, da = rng.normal(size=V.shape), rng.normal(size=A.shape)
    step = 1e-6
    fd = (reference_loss(V + step * dv, A + step * da, mask, TV, TA, audio_mask, **kwargs)
          - reference_loss(V - step * dv, A - step * da, mask, TV, TA, audio_mask, **kwargs)
          ) / (2 * step)
    analytic = float(np.sum(np.asarray(gv, np.float64) * dv)
                     + np.sum(np.asarray(ga, np.float64) * da))
    assert abs(fd) > 1e-4
    np.testing.assert_allclose(analytic, fd, rtol=1e-3, atol=1e-6)


def test_sample_fraction_keeps_a_subset_and_needs_an_rng():
  V, A, mask, TV, TA, _ = random_case(9)
  full = float(icl_hardpos.icl_hardpos_loss(V, A, mask, TV, TA)[0])
  sampled = [float(icl_hardpos.icl_hardpos_loss(V, A, mask, TV, TA, sample_fraction=0.5,
                                                rng=jax.random.key(k))[0]) for k in range(3)]
  assert all(np.isfinite(sampled)) and any(abs(s - full) > 1e-4 for s in sampled)
  with pytest.raises(ValueError, match="rng"):
    icl_hardpos.icl_hardpos_loss(V, A, mask, TV, TA, sample_fraction=0.5)


def test_bad_arguments_are_refused():
  V, A, mask, TV, TA, _ = random_case(0)
  for kwargs, match in ((dict(positives="av"), "must hold 'b'"), (dict(positives="bx"), "bavc"),
                        (dict(negative_anchor="text"), "negative_anchor"),
                        (dict(mined_region="box"), "mined_region"),
                        (dict(inter_positives="all"), "inter_positives"),
                        (dict(inter_positives="mined"), "audio_neighbour_mask")):
    with pytest.raises(ValueError, match=match):
      icl_hardpos.icl_hardpos_loss(V, A, mask, TV, TA, **kwargs)


def test_config_errors_name_the_key():
  from soundloc_jax import methods
  check = methods.get("icl_hardpos").check_config
  check(icl_hardpos_config.get_config("").method)  # the defaults pass
  for key, value, match in (("inter_positives", "all", "method.inter_positives"),
                            ("mined_region", "box", "method.mined_region"),
                            ("negative_anchor", "text", "method.negative_anchor"),
                            ("positives", "av", "method.positives"),
                            ("use_inter", False, "inter_positives=off"),
                            ("detached_positives", "a", "detached_positives"),
                            ("teacher_guard_rank", 2.0, "teacher_guard_rank")):
    cfg = icl_hardpos_config.get_config("").method
    cfg[key] = value
    with pytest.raises(ConfigError, match=match):
      check(cfg)
  cfg = icl_hardpos_config.get_config("").method
  cfg.use_inter, cfg.inter_positives = False, "off"
  check(cfg)


def test_the_teacher_is_used_when_any_piece_needs_it():
  from soundloc_jax import methods
  entry = methods.get("icl_hardpos")
  assert entry.needs_teacher and entry.needs_neighbours
  cfg = icl_hardpos_config.get_config("").method
  assert not entry.teacher_active(cfg.init_epochs - 1, cfg)
  assert entry.teacher_active(cfg.init_epochs, cfg)
  cfg.use_itr = cfg.use_intra = False
  cfg.inter_positives, cfg.mined_region = "mined", "soft"
  assert not entry.teacher_active(cfg.init_epochs, cfg)  # no piece reads it


def test_the_guard_drops_its_audio_pair_check_without_the_teacher_relation():
  """An audio space where every pair reaches delta_a fails ICL's guard; it
  only matters to Eq. 6's teacher relation."""
  cfg = icl_hardpos_config.get_config("").method
  metrics, audio = {"median_rank": 10, "n": 100}, np.ones((20, 4)) / 2.0
  assert not icl_hardpos.teacher_guard(metrics, audio, cfg)[0]
  cfg.inter_positives = "mined"
  ready, report = icl_hardpos.teacher_guard(metrics, audio, cfg)
  assert ready and "only the rank decides" in report
  assert not icl_hardpos.teacher_guard({"median_rank": 60, "n": 100}, audio, cfg)[0]


# --------------------------------------------------------------------------
# The negatives' anchor: the per-side level shortcut (HardPos anchor study).
# A model with no localization can give each audio (or image) its own overall
# response level: every pooled score of a pair (A, V) moves by c[A] (or c[V]);
# a uniform level moves a frame's region and background alike. Batch of 8 in
# mutual neighbour pairs (0,1), (2,3), ...: row i's audio and visual neighbour
# are its partner p(i), which is not a negative of row i (and, with the mined
# relation, a target). Scores carry no audio-visual information (all 0.5).
# --------------------------------------------------------------------------

_B = 8
_PARTNER = np.arange(_B) ^ 1
_PAIR_MASK = ~np.eye(_B, dtype=bool)
_PAIR_MASK[np.arange(_B), _PARTNER] = False
TAU = 0.07


def _level_scores(ca, cv):
  """The pooled scores of `objective` for audio levels `ca`, image levels `cv`."""
  p = _PARTNER
  base = 0.5
  S = base + cv[:, None] + ca[None, :]             # (a_l, V_i)
  Sn = base + ca[p][:, None] + cv[None, :]         # (A_j = a_p(i), V_l)
  return {"S": S, "ST": S.T, "I": S, "IT": S.T, "Sn": Sn, "In": Sn,
          "mined": base + jnp.stack([ca[p] + cv, ca + cv[p], ca[p] + cv[p]], axis=1)}


def _level_objective(anchor, positives, use_intra, partner_is_target, side):
  """Jitted `c -> (loss, gradient)` with per-`side` levels c ("audio" or
  "image"), and `hessian(c)`."""
  targets = np.eye(_B, dtype=bool)
  if partner_is_target:
    targets[np.arange(_B), _PARTNER] = True
  rows = icl_hardpos.contrastive_rows(anchor, positives, use_intra)

  def f(c):
    zero = jnp.zeros(_B)
    ca, cv = (c, zero) if side == "audio" else (zero, c)
    return icl_hardpos.objective(_level_scores(ca, cv), jnp.asarray(targets),
                                 jnp.asarray(_PAIR_MASK & ~targets), jnp.ones(_B, bool), rows,
                                 TAU)
  return jax.jit(jax.value_and_grad(f)), jax.jit(jax.hessian(f))


def _lowest(anchor, positives, use_intra, partner_is_target, side, rng):
  """`(lowest, flat, smallest Hessian eigenvalue at 0)` of the objective over
  per-`side` level vectors: +-t between partners, 80 random vectors at four
  scales, and L-BFGS from three random starts."""
  from scipy.optimize import minimize
  value_and_grad, hessian = _level_objective(anchor, positives, use_intra, partner_is_target,
                                             side)

  def at(c):
    value, grad = value_and_grad(jnp.asarray(c, jnp.float32))
    return float(value), np.asarray(grad, np.float64)

  spread = np.where(np.arange(_B) % 2 == 0, 1.0, -1.0)
  candidates = [t * spread for t in (0.05, 0.2, 1.0)]
  candidates += [s * rng.normal(size=_B) for s in (0.01, 0.05, 0.2, 1.0) for _ in range(20)]
  lowest = min(at(c)[0] for c in candidates)
  for scale in (0.05, 0.3, 1.0):
    lowest = min(lowest, minimize(at, scale * rng.normal(size=_B), jac=True,
                                  method="L-BFGS-B").fun)
  curvature = np.linalg.eigvalsh(np.asarray(hessian(jnp.zeros(_B)), np.float64)).min()
  return lowest, at(np.zeros(_B))[0], curvature


@pytest.mark.parametrize("use_intra", [True, False])
@pytest.mark.parametrize("partner_is_target", [False, True])
def test_only_the_both_anchor_leaves_no_per_side_level_shortcut(use_intra, partner_is_target):
  """Exact property of the objective on information-free scores:
  (1) image anchor with P_v or P_c (another image than the anchor): per-image
      levels lower the loss by more than a fifth; per-audio levels never do;
  (2) audio anchor with P_a or P_c (another audio): per-audio levels lower it
      by more than a fifth; per-image levels never do;
  (3) either single anchor with only the terms that share its side (image:
      "ba", audio: "bv"), and "both" with every subset: no level vector of
      either side lowers it (to float32 rounding), so "both" is the default."""
  rng = np.random.default_rng(0)
  opens = {"image": ("image", ("bv", "bc", "bavc")), "audio": ("audio", ("ba", "bc", "bavc"))}
  for anchor, (side, subsets) in opens.items():
    other = "audio" if side == "image" else "image"
    for positives in subsets:
      lowest, flat, _ = _lowest(anchor, positives, use_intra, partner_is_target, side, rng)
      assert lowest < 0.8 * flat, (anchor, positives, lowest, flat)
      lowest, flat, curvature = _lowest(anchor, positives, use_intra, partner_is_target, other,
                                        rng)
      assert lowest >= flat - 1e-5 and curvature > -1e-4, (anchor, positives, other, lowest,
                                                            flat, curvature)
  closed = [("image", "ba"), ("audio", "bv")] + [("both", p) for p in ("bavc", "ba", "bv", "bc",
                                                                        "b")]
  for anchor, positives in closed:
    for side in ("audio", "image"):
      lowest, flat, curvature = _lowest(anchor, positives, use_intra, partner_is_target, side,
                                        rng)
      # Zero levels are a minimum: nothing found below it, no direction of
      # negative curvature there.
      assert lowest >= flat - 1e-5 and curvature > -1e-4, (anchor, positives, side, lowest,
                                                            flat, curvature)
  assert icl_hardpos_config.get_config("").method.negative_anchor == "both"


def test_a_background_term_for_the_mined_audio_would_reopen_a_small_audio_shortcut():
  """Why the image row has no background v-_i . A_j: with it, A_j meets the
  frame's background once more than the batch's audios, and zero per-audio
  levels stop being a minimum of the both-anchored loss with P_a: the Hessian
  there has a negative eigenvalue, and levels lower the loss (by little:
  ~1e-3 of 2.4). Written out in NumPy, the both-anchored rows of positives
  "ba" with (`with_term`) and without that one term; without it they are
  the library's rows (checked against `objective`)."""
  from scipy.optimize import minimize
  p, others = _PARTNER, _PAIR_MASK

  def at(c, with_term):  # per-audio levels c on information-free scores 0.5
    S = 0.5 + np.broadcast_to(c[None, :], (_B, _B))  # (a_l, V_i) and its background
    total = 0.0
    for i in range(_B):
      image_pos = np.exp(np.array([S[i, i], 0.5 + c[p[i]]]) / TAU).sum()  # P_b, P_a
      image_neg = (np.exp(S[i, others[i]] / TAU).sum() + np.exp(S[i] / TAU).sum()
                   + with_term * np.exp((0.5 + c[p[i]]) / TAU))  # the background with A_j
      audio_pos = np.exp(S[i, i] / TAU)  # (a_i, V_l): a_i's level in every term
      audio_neg = np.exp(np.full(others[i].sum() + _B, 0.5 + c[i]) / TAU).sum()
      total += (np.log1p(image_neg / image_pos) + np.log1p(audio_neg / audio_pos)) / 2
    return total / _B

  def min_curvature(f, h=1e-3):
    e = np.eye(_B) * h
    hess = np.array([[(f(e[a] + e[b]) - f(e[a] - e[b]) - f(e[b] - e[a]) + f(-e[a] - e[b]))
                      / (4 * h * h) for b in range(_B)] for a in range(_B)])
    return np.linalg.eigvalsh(hess).min()

  rng = np.random.default_rng(1)
  library, _ = _level_objective("both", "ba", True, False, "audio")
  for c in (np.zeros(_B), 0.1 * rng.normal(size=_B)):
    np.testing.assert_allclose(at(c, False), float(library(jnp.asarray(c, jnp.float32))[0]),
                               rtol=1e-5)
  assert min_curvature(lambda c: at(c, False)) > -1e-4
  assert min_curvature(lambda c: at(c, True)) < -0.01
  flat = at(np.zeros(_B), True)
  bounded = lambda c: at(c, True) if np.abs(c).max() < 3 else np.inf  # noqa: E731
  lowest = min(minimize(bounded, 0.05 * rng.normal(size=_B), method="Nelder-Mead",
                        options=dict(maxiter=3000, fatol=1e-10)).fun for _ in range(2))
  assert lowest < flat - 2e-4, (lowest, flat)
