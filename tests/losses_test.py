"""Tests of soundloc_jax.methods.icl (the ICL losses) against an independent, slow float64 reference.

The reference below is written from the ICL paper (Eq. 1-7) and the loss spec,
with explicit Python loops over samples, patches and feature channels, so that
it is obviously correct rather than fast.  Nothing in it is vectorised.

Spec being checked (ICL, "Iterative Contrastive Learning"):
  Eq. 1  Rn = (R - min R) / (max R - min R) per sample; max - min <= eps means
         the map is constant: its normalised map is all zeros.
  Eq. 3  v_i = mean of the (already L2-normalised) patch features of sample i,
         l_ij = v_i . a_j / tau, loss = mean_i -log softmax_j(l_i)[i].
  Eq. 4  positives: Rn > delta_v (strict); Eq. 5 negatives: Rn < delta_v
         (strict); a patch exactly at delta_v is in neither set; a constant
         teacher map has all patches positive and none negative.
  Eq. 6  y_ij = [<ta_i, ta_j> >= delta_a], y_ii = 1 forced.
  Eq. 7  loss_i = -log( sum_j y_ij e^{pos_ij} /
                        (sum_j e^{pos_ij} + [intra, has neg] sum_j e^{neg_ij}) ).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soundloc_jax.methods import icl
from soundloc_jax.methods.icl import contrastive_loss, icl_loss, normalize_response

RTOL = 1e-5
ATOL = 1e-5
EPS = 1e-6

# --------------------------------------------------------------------------
# Slow float64 reference (loops only).
# --------------------------------------------------------------------------


def _dot(u, v):
    s = 0.0
    for k in range(len(u)):
        s += float(u[k]) * float(v[k])
    return s


def ref_normalize(response, eps=EPS):
    """Eq. 1, per sample, loops over patches.  Returns (normalized, is_constant)."""
    r = np.asarray(response, dtype=np.float64)
    B, h, w = r.shape
    out = np.zeros((B, h, w), dtype=np.float64)
    const = []
    for b in range(B):
        mn = math.inf
        mx = -math.inf
        for y in range(h):
            for x in range(w):
                mn = min(mn, float(r[b, y, x]))
                mx = max(mx, float(r[b, y, x]))
        if mx - mn <= eps:
            const.append(True)  # all zeros
            continue
        const.append(False)
        for y in range(h):
            for x in range(w):
                out[b, y, x] = (float(r[b, y, x]) - mn) / (mx - mn)
    return out, np.array(const, dtype=bool)


def _mean_patches(V_i, patches):
    """phi over a list of (y, x) patch indices: plain average, no re-normalisation."""
    d = V_i.shape[-1]
    acc = [0.0] * d
    for (y, x) in patches:
        for k in range(d):
            acc[k] += float(V_i[y, x, k])
    return [acc[k] / len(patches) for k in range(d)]


def ref_contrastive(V, a, tau):
    """Eq. 3."""
    V = np.asarray(V, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    B, h, w, _ = V.shape
    all_patches = [(y, x) for y in range(h) for x in range(w)]
    total = 0.0
    for i in range(B):
        v_i = _mean_patches(V[i], all_patches)
        num = 0.0
        den = 0.0
        for j in range(B):
            e = math.exp(_dot(v_i, a[j]) / tau)
            den += e
            if j == i:
                num = e
        total += -math.log(num / den)
    return total / B


def ref_y(ta, delta_a, use_inter):
    """Eq. 6 with forced diagonal; identity when use_inter is False."""
    ta = np.asarray(ta, dtype=np.float64)
    B = ta.shape[0]
    y = np.zeros((B, B))
    for i in range(B):
        for j in range(B):
            if i == j:
                y[i, j] = 1.0
            elif use_inter and _dot(ta[i], ta[j]) >= delta_a:
                y[i, j] = 1.0
    return y


def ref_icl(V, a, tr, ta, *, tau, delta_v, delta_a, use_itr=True, use_intra=True,
            use_inter=True, pos_inclusive=False, neg_inclusive=False, keep=None):
    """Eq. 4-7.  pos_inclusive / neg_inclusive deliberately break the strictness
    (>= / <= instead of > / <) so that a test can show the edge case is exercised.
    `keep` = (pos_keep, neg_keep) bool [B, h, w]: the paper's random sampling,
    each set restricted to its kept patches (a set left empty stays whole)."""
    V = np.asarray(V, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    B, h, w, _ = V.shape
    Rn, const = ref_normalize(tr)
    y = ref_y(ta, delta_a, use_inter)
    all_patches = [(yy, xx) for yy in range(h) for xx in range(w)]
    total = 0.0
    for i in range(B):
        pos, neg = [], []
        for (yy, xx) in all_patches:
            r = Rn[i, yy, xx]
            if const[i]:
                pos.append((yy, xx))  # constant map: all positive, none negative
                continue
            if (r >= delta_v) if pos_inclusive else (r > delta_v):
                pos.append((yy, xx))
            if (r <= delta_v) if neg_inclusive else (r < delta_v):
                neg.append((yy, xx))
        if keep is not None:
            kept_pos = [p for p in pos if keep[0][i][p]]
            kept_neg = [p for p in neg if keep[1][i][p]]
            pos, neg = kept_pos or pos, kept_neg or neg
        v_plus = _mean_patches(V[i], pos if use_itr else all_patches)
        v_minus = _mean_patches(V[i], neg) if neg else None
        num = 0.0
        den = 0.0
        for j in range(B):
            e_pos = math.exp(_dot(v_plus, a[j]) / tau)
            num += y[i, j] * e_pos
            den += e_pos
            if use_intra and v_minus is not None:
                den += math.exp(_dot(v_minus, a[j]) / tau)
        total += -math.log(num / den)
    return total / B


# --------------------------------------------------------------------------
# Input generation.
# --------------------------------------------------------------------------


def _l2n(x, axis=-1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def make_inputs(seed, B, hw, d, delta_v=0.5, delta_a=0.6, n_clusters=2):
    """L2-normalised float32 student/teacher tensors.  The teacher audio is
    clustered so that y has off-diagonal ones; the seed is checked to keep all
    thresholded quantities well away from the thresholds."""
    rng = np.random.default_rng(seed)
    V = _l2n(rng.normal(size=(B, hw, hw, d))).astype(np.float32)
    a = _l2n(rng.normal(size=(B, d))).astype(np.float32)
    tV = _l2n(rng.normal(size=(B, hw, hw, d)))
    tA = _l2n(rng.normal(size=(B, d)))
    tr = np.einsum("bhwd,bd->bhw", tV, tA).astype(np.float32)  # raw cosine map
    centers = _l2n(rng.normal(size=(n_clusters, d)))
    labels = rng.integers(0, n_clusters, size=B)
    ta = _l2n(centers[labels] + 0.25 * rng.normal(size=(B, d))).astype(np.float32)
    # margins: no patch / audio similarity within 1e-4 of its threshold
    Rn, _ = ref_normalize(tr)
    assert np.min(np.abs(Rn - delta_v)) > 1e-4, seed
    sims = ta.astype(np.float64) @ ta.astype(np.float64).T
    assert np.min(np.abs(sims - delta_a)) > 1e-4, seed
    return V, a, tr, ta


def to_j(*xs):
    return tuple(jnp.asarray(x) for x in xs)


# Flag combinations; the five ICL Table 2 ablation rows carry their names.
COMBOS = {
    "initial": (False, False, False),
    "itr": (True, False, False),
    "itr_intra": (True, True, False),
    "itr_inter": (True, False, True),
    "full": (True, True, True),
    "intra_only": (False, True, False),
    "inter_only": (False, False, True),
    "intra_inter": (False, True, True),
}
TABLE2_ROWS = ["initial", "itr", "itr_intra", "itr_inter", "full"]

# (seed, B, h=w, d, tau): covers B in {1,2,5,8}, h=w in {2,4,7}, d in {3,16},
# tau in {0.07, 0.2, 1.0}.
CONFIGS = [
    (0, 1, 2, 3, 0.07),
    (1, 2, 4, 16, 0.2),
    (2, 5, 7, 3, 1.0),
    (3, 8, 2, 16, 0.07),
    (4, 8, 7, 16, 0.2),
]
DELTA_V = 0.5
DELTA_A = 0.6


def _kw(kw):
    kw = dict(kw)
    kw.setdefault("tau", 0.2)
    kw.setdefault("delta_v", DELTA_V)
    kw.setdefault("delta_a", DELTA_A)
    kw.setdefault("sample_fraction", 1.0)
    return kw


def run_icl(V, a, tr, ta, flags, rng=None, **kw):
    """Eager call (op-by-op dispatch caches per shape, which is far cheaper on
    2 CPU cores than one jit compile per configuration); jit is tested once."""
    itr, intra, inter = flags
    return icl_loss(*to_j(V, a, tr, ta), use_itr=itr, use_intra=intra,
                    use_inter=inter, rng=rng, **_kw(kw))


def run_ref(V, a, tr, ta, flags, **kw):
    itr, intra, inter = flags
    kw.setdefault("tau", 0.2)
    kw.setdefault("delta_v", DELTA_V)
    kw.setdefault("delta_a", DELTA_A)
    return ref_icl(V, a, tr, ta, use_itr=itr, use_intra=intra, use_inter=inter, **kw)


def check_grads(V, a, tr, ta, flags, rng=None, **kw):
    """Gradients w.r.t. student inputs finite; w.r.t. teacher inputs exactly zero."""
    itr, intra, inter = flags
    kw = _kw(kw)

    def f(V_, a_, tr_, ta_):
        return icl_loss(V_, a_, tr_, ta_, use_itr=itr, use_intra=intra,
                        use_inter=inter, rng=rng, **kw)[0]

    gV, ga, gtr, gta = jax.grad(f, argnums=(0, 1, 2, 3))(*to_j(V, a, tr, ta))
    assert np.all(np.isfinite(np.asarray(gV)))
    assert np.all(np.isfinite(np.asarray(ga)))
    assert np.all(np.asarray(gtr) == 0.0)
    assert np.all(np.asarray(gta) == 0.0)
    return gV, ga


# --------------------------------------------------------------------------
# normalize_response (Eq. 1)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed,B,hw", [(0, 1, 2), (1, 5, 4), (2, 8, 7)])
def test_normalize_response_random(seed, B, hw):
    r = np.random.default_rng(seed).uniform(-1, 1, size=(B, hw, hw)).astype(np.float32)
    n, c = normalize_response(jnp.asarray(r))
    rn, rc = ref_normalize(r)
    assert n.shape == (B, hw, hw) and n.dtype == jnp.float32
    assert c.shape == (B,) and c.dtype == jnp.bool_
    np.testing.assert_allclose(np.asarray(n), rn, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(np.asarray(c), rc)
    assert not rc.any()
    # min maps to exactly 0 and max to 1 (XLA:CPU division is not correctly
    # rounded, 1 - 2**-24 has been observed, so only up to one ulp)
    for b in range(B):
        assert float(np.min(np.asarray(n)[b])) == 0.0
        assert abs(float(np.max(np.asarray(n)[b])) - 1.0) <= 2e-7


def test_normalize_response_constant_and_near_constant():
    r = np.zeros((4, 2, 2), np.float32)
    r[0] = 0.3                                     # exactly constant
    r[1] = [[0.0, 5e-7], [0.0, 0.0]]               # range <= eps: constant
    r[2] = [[0.0, 1e-5], [0.0, 1e-5]]              # range > eps: not constant
    r[3] = [[-1.0, 0.0], [1.0, 0.5]]
    n, c = normalize_response(jnp.asarray(r))
    rn, rc = ref_normalize(r)
    np.testing.assert_array_equal(np.asarray(c), [True, True, False, False])
    np.testing.assert_array_equal(rc, [True, True, False, False])
    np.testing.assert_allclose(np.asarray(n), rn, rtol=RTOL, atol=ATOL)
    assert np.all(np.asarray(n)[:2] == 0.0)
    np.testing.assert_array_equal(np.asarray(n)[3], [[0.0, 0.5], [1.0, 0.75]])


def test_normalize_response_bfloat16_input_gives_float32():
    r = np.random.default_rng(3).uniform(-1, 1, size=(2, 4, 4)).astype(np.float32)
    rb = jnp.asarray(r, dtype=jnp.bfloat16)
    n, _ = normalize_response(rb)
    assert n.dtype == jnp.float32
    rn, _ = ref_normalize(np.asarray(rb.astype(jnp.float32)))
    np.testing.assert_allclose(np.asarray(n), rn, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------
# Eq. 3 and all 8 ICL flag combinations on random inputs
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed,B,hw,d,tau", CONFIGS)
def test_contrastive_loss_matches_reference_and_icl_all_off(seed, B, hw, d, tau):
    V, a, tr, ta = make_inputs(seed, B, hw, d)
    got = contrastive_loss(*to_j(V, a), tau)
    assert got.shape == () and got.dtype == jnp.float32
    ref = ref_contrastive(V, a, tau)
    np.testing.assert_allclose(float(got), ref, rtol=RTOL, atol=ATOL)
    off, _ = run_icl(V, a, tr, ta, COMBOS["initial"], tau=tau)
    np.testing.assert_allclose(float(off), float(got), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run_ref(V, a, tr, ta, COMBOS["initial"], tau=tau), ref,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("combo", list(COMBOS))
@pytest.mark.parametrize("seed,B,hw,d,tau", CONFIGS)
def test_icl_matches_reference(combo, seed, B, hw, d, tau):
    V, a, tr, ta = make_inputs(seed, B, hw, d)
    loss, aux = run_icl(V, a, tr, ta, COMBOS[combo], tau=tau)
    assert loss.shape == () and loss.dtype == jnp.float32
    assert isinstance(aux, dict)
    ref = run_ref(V, a, tr, ta, COMBOS[combo], tau=tau)
    np.testing.assert_allclose(float(loss), ref, rtol=RTOL, atol=ATOL)


def test_random_inputs_exercise_every_term():
    """Sanity of the fixtures: inter, intra and itr each change the reference
    loss on the random configs (otherwise the 8-combo test would be vacuous)."""
    n_inter = n_intra = n_itr = 0
    for (seed, B, hw, d, tau) in CONFIGS:
        V, a, tr, ta = make_inputs(seed, B, hw, d)
        y = ref_y(ta, DELTA_A, True)
        n_inter += int(y.sum() - B)
        full = run_ref(V, a, tr, ta, COMBOS["full"], tau=tau)
        n_intra += abs(full - run_ref(V, a, tr, ta, (True, False, True), tau=tau)) > 1e-3
        n_itr += abs(full - run_ref(V, a, tr, ta, (False, True, True), tau=tau)) > 1e-3
    assert n_inter >= 10 and n_intra == len(CONFIGS) and n_itr == len(CONFIGS)


@pytest.mark.parametrize("row", TABLE2_ROWS)
def test_table2_ablation_rows(row):
    """The five ICL Table 2 rows, by name, against the reference, with grads."""
    V, a, tr, ta = make_inputs(5, 5, 7, 3)
    loss, _ = run_icl(V, a, tr, ta, COMBOS[row], tau=0.07)
    np.testing.assert_allclose(float(loss),
                               run_ref(V, a, tr, ta, COMBOS[row], tau=0.07),
                               rtol=RTOL, atol=ATOL)
    if row == "initial":
        np.testing.assert_allclose(float(loss), float(contrastive_loss(*to_j(V, a), 0.07)),
                                   rtol=RTOL, atol=ATOL)
    check_grads(V, a, tr, ta, COMBOS[row], tau=0.07)


@pytest.mark.parametrize("combo", ["initial", "itr_intra", "full", "intra_inter"])
def test_gradient_matches_finite_differences_of_reference(combo):
    V, a, tr, ta = make_inputs(11, 4, 2, 3)
    flags = COMBOS[combo]
    gV, ga = check_grads(V, a, tr, ta, flags)
    V64, a64 = V.astype(np.float64), a.astype(np.float64)
    h = 1e-6

    def fd(arr, other, which):
        g = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            p, m = arr.copy(), arr.copy()
            p[idx] += h
            m[idx] -= h
            if which == "V":
                fp = run_ref(p, other, tr, ta, flags)
                fm = run_ref(m, other, tr, ta, flags)
            else:
                fp = run_ref(other, p, tr, ta, flags)
                fm = run_ref(other, m, tr, ta, flags)
            g[idx] = (fp - fm) / (2 * h)
        return g

    np.testing.assert_allclose(np.asarray(gV), fd(V64, a64, "V"), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(ga), fd(a64, V64, "a"), rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------


def _tie_inputs(seed=21, B=4, d=3):
    """h=w=2 teacher maps with values {0, 0.5, 1} (and a min-max-exact affine
    copy): after Eq. 1 the 0.5 patches sit exactly on delta_v=0.5."""
    V, a, _, ta = make_inputs(seed, B, 2, d)
    tr = np.array([
        [[0.0, 0.5], [1.0, 0.5]],
        [[-1.0, 0.0], [1.0, 1.0]],     # -> {0, 0.5, 1, 1}
        [[0.5, 1.0], [0.0, 0.0]],
        [[3.0, 2.0], [1.0, 2.0]],      # -> {1, 0.5, 0, 0.5}
    ], np.float32)[:B]
    Rn, const = ref_normalize(tr)
    assert not const.any() and np.sum(Rn == 0.5) == 6
    return V, a, tr, ta


@pytest.mark.parametrize("combo", list(COMBOS))
def test_patches_exactly_at_delta_v_are_in_neither_set(combo):
    V, a, tr, ta = _tie_inputs()
    loss, _ = run_icl(V, a, tr, ta, COMBOS[combo])
    np.testing.assert_allclose(float(loss), run_ref(V, a, tr, ta, COMBOS[combo]),
                               rtol=RTOL, atol=ATOL)
    check_grads(V, a, tr, ta, COMBOS[combo])


@pytest.mark.parametrize("mutation", ["pos_inclusive", "neg_inclusive"])
def test_swapped_strictness_is_detected(mutation):
    """The tie edge case is exercised: a reference with >= (or <=) instead of
    the strict comparison differs clearly from icl_loss."""
    V, a, tr, ta = _tie_inputs()
    flags = COMBOS["full"]
    loss = float(run_icl(V, a, tr, ta, flags)[0])
    good = run_ref(V, a, tr, ta, flags)
    bad = run_ref(V, a, tr, ta, flags, **{mutation: True})
    assert abs(good - bad) > 1e-3
    np.testing.assert_allclose(loss, good, rtol=RTOL, atol=ATOL)
    assert not np.isclose(loss, bad, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("which", ["one_row", "all_rows"])
@pytest.mark.parametrize("combo", ["itr", "itr_intra", "full", "intra_only"])
def test_constant_teacher_map(which, combo):
    V, a, tr, ta = make_inputs(31, 4, 4, 16)
    if which == "one_row":
        tr[2] = 0.25
    else:
        tr[:] = 0.7
        tr[1] = -0.3
    loss, _ = run_icl(V, a, tr, ta, COMBOS[combo])
    np.testing.assert_allclose(float(loss), run_ref(V, a, tr, ta, COMBOS[combo]),
                               rtol=RTOL, atol=ATOL)
    check_grads(V, a, tr, ta, COMBOS[combo])
    if which == "all_rows":
        # all patches positive, none negative: v+ = phi(V), no intra term at all,
        # so every combination collapses to the itr-off/intra-off variant.
        itr, intra, inter = COMBOS[combo]
        base, _ = run_icl(V, a, tr, ta, (False, False, inter))
        np.testing.assert_allclose(float(loss), float(base), rtol=RTOL, atol=ATOL)


def test_delta_v_zero_means_no_negatives_and_no_intra_term():
    V, a, tr, ta = make_inputs(41, 5, 7, 3)
    with_intra, _ = run_icl(V, a, tr, ta, COMBOS["full"], delta_v=0.0)
    without, _ = run_icl(V, a, tr, ta, COMBOS["itr_inter"], delta_v=0.0)
    ref = run_ref(V, a, tr, ta, COMBOS["full"], delta_v=0.0)
    np.testing.assert_allclose(float(with_intra), ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(float(with_intra), float(without), rtol=RTOL, atol=ATOL)
    check_grads(V, a, tr, ta, COMBOS["full"], delta_v=0.0)


@pytest.mark.parametrize("combo", ["itr_inter", "full", "inter_only"])
def test_delta_a_several_off_diagonal_ones(combo):
    B, d = 4, 16
    V, a, tr, _ = make_inputs(51, B, 4, d)
    rng = np.random.default_rng(52)
    centers = _l2n(rng.normal(size=(2, d)))
    labels = np.array([0, 0, 1, 0])
    ta = _l2n(centers[labels] + 0.1 * rng.normal(size=(B, d))).astype(np.float32)
    delta_a = 0.8
    y = ref_y(ta, delta_a, True)
    assert y.sum() - B >= 6  # several off-diagonal ones
    sims = ta.astype(np.float64) @ ta.astype(np.float64).T
    assert np.min(np.abs(sims - delta_a)) > 1e-3
    loss, _ = run_icl(V, a, tr, ta, COMBOS[combo], delta_a=delta_a)
    ref = run_ref(V, a, tr, ta, COMBOS[combo], delta_a=delta_a)
    np.testing.assert_allclose(float(loss), ref, rtol=RTOL, atol=ATOL)
    # the inter term really matters here
    itr, intra, _ = COMBOS[combo]
    no_inter = run_ref(V, a, tr, ta, (itr, intra, False), delta_a=delta_a)
    assert no_inter - ref > 1e-3
    check_grads(V, a, tr, ta, COMBOS[combo], delta_a=delta_a)


def test_delta_a_one_equal_vs_distinct_teacher_audio():
    """delta_a = 1.0: equal (exactly unit, exactly representable) teacher audio
    rows give y_ij = 1 off the diagonal; distinct rows give 0."""
    B, d = 4, 16
    V, a, tr, _ = make_inputs(61, B, 4, d)
    u = np.full((d,), 0.25, np.float32)       # |u| = 1 exactly in float32
    e0 = np.zeros((d,), np.float32)
    e0[0] = 1.0
    e1 = np.zeros((d,), np.float32)
    e1[1] = 1.0
    ta_equal = np.stack([u, u, e0, e1])       # rows 0 and 1 equal
    ta_distinct = np.stack([u, e0, e1, -u])
    y_eq = ref_y(ta_equal, 1.0, True)
    assert y_eq[0, 1] == 1 and y_eq[1, 0] == 1 and y_eq.sum() == B + 2
    assert ref_y(ta_distinct, 1.0, True).sum() == B
    for ta, inter_changes in [(ta_equal, True), (ta_distinct, False)]:
        for combo in ["itr_inter", "full"]:
            loss, _ = run_icl(V, a, tr, ta, COMBOS[combo], delta_a=1.0)
            ref = run_ref(V, a, tr, ta, COMBOS[combo], delta_a=1.0)
            np.testing.assert_allclose(float(loss), ref, rtol=RTOL, atol=ATOL)
            itr, intra, _ = COMBOS[combo]
            no_inter, _ = run_icl(V, a, tr, ta, (itr, intra, False), delta_a=1.0)
            assert (abs(float(loss) - float(no_inter)) > 1e-4) == inter_changes
            check_grads(V, a, tr, ta, COMBOS[combo], delta_a=1.0)


@pytest.mark.parametrize("combo", list(COMBOS))
def test_batch_of_one(combo):
    V, a, tr, ta = make_inputs(71, 1, 2, 3)
    loss, _ = run_icl(V, a, tr, ta, COMBOS[combo])
    ref = run_ref(V, a, tr, ta, COMBOS[combo])
    np.testing.assert_allclose(float(loss), ref, rtol=RTOL, atol=ATOL)
    if not COMBOS[combo][1]:
        assert abs(float(loss)) < 1e-6  # single-element softmax
    check_grads(V, a, tr, ta, COMBOS[combo])


@pytest.mark.parametrize("combo", ["initial", "itr", "itr_intra", "full"])
def test_large_logits_stay_finite(combo):
    """tau = 0.01 with features aligned to the audio: logits ~ +-100, beyond
    float32 exp range (~88.7), so a naive exp would overflow."""
    B, hw, d = 4, 2, 3
    a = np.eye(d, dtype=np.float32)[[0, 1, 2, 0]] * np.array([1, 1, 1, -1], np.float32)[:, None]
    V = np.zeros((B, hw, hw, d), np.float32)
    tr = np.zeros((B, hw, hw), np.float32)
    for i in range(B):
        V[i, 0, 0] = a[i]          # sounding patch aligned with own audio
        V[i, 0, 1] = a[i]
        V[i, 1, 0] = -a[i]         # non-sounding, anti-aligned
        V[i, 1, 1] = a[(i + 1) % B]
        tr[i] = [[1.0, 0.9], [-1.0, -0.5]]
    ta = a.copy()
    kw = dict(tau=0.01, delta_v=0.5, delta_a=0.99)
    loss, _ = run_icl(V, a, tr, ta, COMBOS[combo], **kw)
    assert np.isfinite(float(loss))
    ref = run_ref(V, a, tr, ta, COMBOS[combo], **kw)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-4, atol=1e-4)
    check_grads(V, a, tr, ta, COMBOS[combo], **kw)


# --------------------------------------------------------------------------
# sample_fraction / rng, dtype, jit
# --------------------------------------------------------------------------


def test_sample_fraction_one_is_deterministic_and_ignores_rng():
    V, a, tr, ta = make_inputs(81, 4, 4, 16)
    ref = run_ref(V, a, tr, ta, COMBOS["full"])
    vals = [float(run_icl(V, a, tr, ta, COMBOS["full"], sample_fraction=1.0, rng=r)[0])
            for r in (None, jax.random.key(0), jax.random.key(7))]
    assert vals[0] == vals[1] == vals[2]
    np.testing.assert_allclose(vals[0], ref, rtol=RTOL, atol=ATOL)


def test_sample_fraction_half_averages_a_random_half_of_each_patch_set():
    """sample_fraction=0.5 keeps each positive / negative patch with probability
    1/2 (keys split from the step's rng): the loss equals the reference over
    exactly the kept patches, the kept share is about half, and other keys keep
    other patches."""
    V, a, tr, ta = make_inputs(82, 8, 7, 16)
    full = run_icl(V, a, tr, ta, COMBOS["full"])
    full_fraction = float(full[1]["positive_patch_fraction"])
    losses = []
    for key in (0, 1, 2):
        rng = jax.random.key(key)
        loss, aux = run_icl(V, a, tr, ta, COMBOS["full"], sample_fraction=0.5, rng=rng)
        pos_rng, neg_rng = jax.random.split(rng)
        positive, negative, _ = icl.pseudo_label_masks(jnp.asarray(tr), DELTA_V)
        keep = (np.asarray(icl.subsample_patches(positive, 0.5, pos_rng)),
                np.asarray(icl.subsample_patches(negative, 0.5, neg_rng)))
        ref = run_ref(V, a, tr, ta, COMBOS["full"], keep=keep)
        np.testing.assert_allclose(float(loss), ref, rtol=RTOL, atol=ATOL)
        # ~196 positive patches: half of them kept, within 4 standard deviations.
        assert 0.35 < float(aux["positive_patch_fraction"]) / full_fraction < 0.65
        losses.append(float(loss))
    assert len(set(losses)) == 3 and float(full[0]) not in losses
    check_grads(V, a, tr, ta, COMBOS["full"], sample_fraction=0.5, rng=jax.random.key(0))


def test_sample_fraction_half_on_singleton_sets_equals_full():
    """Each row has exactly one positive and one negative patch (the others sit
    on delta_v): any non-empty subset is the whole set and an empty one falls
    back to it, so sample_fraction=0.5 must give the deterministic loss."""
    V, a, _, ta = make_inputs(83, 4, 2, 3)
    tr = np.tile(np.array([[1.0, 0.5], [0.5, 0.0]], np.float32), (4, 1, 1))
    ref = run_ref(V, a, tr, ta, COMBOS["full"])
    for key in range(3):
        loss, _ = run_icl(V, a, tr, ta, COMBOS["full"], sample_fraction=0.5,
                          rng=jax.random.key(key))
        np.testing.assert_allclose(float(loss), ref, rtol=RTOL, atol=ATOL)


def test_bfloat16_inputs_computed_in_float32():
    V, a, tr, ta = make_inputs(91, 4, 4, 16)
    bf = [jnp.asarray(x, dtype=jnp.bfloat16) for x in (V, a, tr, ta)]
    loss, _ = icl_loss(*bf, tau=0.2, delta_v=DELTA_V, delta_a=DELTA_A)
    assert loss.dtype == jnp.float32
    rounded = [np.asarray(x.astype(jnp.float32)) for x in bf]
    ref = run_ref(*rounded, COMBOS["full"])
    # bf16-rounded inputs, float32 arithmetic: float32-level agreement
    np.testing.assert_allclose(float(loss), ref, rtol=1e-4, atol=1e-4)
    c = contrastive_loss(bf[0], bf[1], 0.2)
    assert c.dtype == jnp.float32
    np.testing.assert_allclose(float(c), ref_contrastive(rounded[0], rounded[1], 0.2),
                               rtol=1e-4, atol=1e-4)


def test_jit_matches_eager_and_reference():
    """The rest of the file calls icl_loss eagerly; check it also jits (flags
    and hyper-parameters as Python constants, rng traced)."""
    V, a, tr, ta = make_inputs(3, 8, 2, 16)
    kw = dict(tau=0.07, delta_v=DELTA_V, delta_a=DELTA_A)
    f = jax.jit(lambda *xs: icl_loss(*xs, **kw)[0])
    jitted = float(f(*to_j(V, a, tr, ta)))
    np.testing.assert_allclose(jitted, run_ref(V, a, tr, ta, COMBOS["full"], **kw),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(jitted, float(run_icl(V, a, tr, ta, COMBOS["full"], **kw)[0]),
                               rtol=1e-6, atol=1e-6)
    g = jax.jit(lambda V_, a_, tr_, ta_, key: icl_loss(
        V_, a_, tr_, ta_, sample_fraction=0.5, rng=key, **kw)[0])
    assert np.isfinite(float(g(*to_j(V, a, tr, ta), jax.random.key(0))))
