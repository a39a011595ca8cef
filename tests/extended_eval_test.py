"""The extended protocol (evaluation/extended.py, the "extended" evaluator):
AP and max-F1 against slow loop references of both rules, cases whose answer
is known, and inputs that must not crash or give NaN (flat maps, off-screen
pairs only, NaN maps, silence)."""

import math
import types

import numpy as np
import pytest

from soundloc_jax import audio as audio_lib
from soundloc_jax.evaluation import annotations, evaluators, extended


# ---------------------------------------------------------------------------
# Loop references: one pair at a time, straight from the rules as written.
# ---------------------------------------------------------------------------

def _loop_pr(positive, cious, conf, t, iou=0.5):
  tp = fp = fn = 0
  for pos, c, s in zip(positive, cious, conf):
    if s >= t:
      if pos and c >= iou:
        tp += 1
      else:
        fp += 1          # off-screen pair detected, or a visible one found in the wrong place
    elif pos:
      fn += 1
  p = 1.0 if tp + fp == 0 else tp / (tp + fp)
  r = 1.0 if tp + fn == 0 else tp / (tp + fn)
  return p, r


def _loop_f1(p, r):
  return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _loop_exact(positive, cious, conf):
  thresholds = sorted(set(conf), reverse=True)
  pr = [_loop_pr(positive, cious, conf, t) for t in thresholds]
  ap, previous = 0.0, 0.0
  for k, (_, r) in enumerate(pr):
    ap += (r - previous) * max(p for p, _ in pr[k:])
    previous = r
  return ap, max(_loop_f1(p, r) for p, r in pr)


def _loop_slavc(positive, cious, conf):
  """SLAVC's released EvaluatorFull.calc_ap and the F1 list of finalize_stats."""
  n = len(conf)
  ordered = sorted(conf)
  skip = max(1, n // 200)
  thresholds = ordered[:-1][::-1][::skip]
  precision, recall = [], []
  for t in thresholds:
    p, r = _loop_pr(positive, cious, conf, t)
    precision.append(p)
    recall.append(r)
  pmax = [max(precision[i:]) for i in range(len(precision))]
  ap = sum(pmax[i] * (recall[i + 1] - recall[i]) for i in range(len(pmax) - 1))
  f1 = [_loop_f1(*_loop_pr(positive, cious, conf, t)) for t in ordered[::max(1, n // 10)]]
  return ap, max(f1)


def _random_pairs(seed, n, ties=False):
  rng = np.random.default_rng(seed)
  positive = rng.random(n) < 0.6
  cious = np.where(positive, rng.random(n), 0.0)
  conf = rng.random(n)
  if ties:
    conf = np.round(conf * 7) / 7
  return positive, cious, conf


@pytest.mark.parametrize("seed,n,ties", [(0, 7, False), (1, 40, True), (2, 250, False),
                                         (3, 450, True), (4, 1, False), (5, 2, True)])
@pytest.mark.parametrize("rule,reference", [("exact", _loop_exact), ("slavc", _loop_slavc)])
def test_ap_and_max_f1_match_the_loop_reference(seed, n, ties, rule, reference):
  positive, cious, conf = _random_pairs(seed, n, ties)
  if not positive.any():
    positive[0] = True
  got = extended.ap_max_f1(positive, cious, conf, rule=rule)
  want_ap, want_f1 = reference(list(positive), list(cious), list(conf))
  assert math.isclose(got["ap"], want_ap, rel_tol=0, abs_tol=1e-12)
  assert math.isclose(got["max_f1"], want_f1, rel_tol=0, abs_tol=1e-12)


def test_counts_match_the_loop_at_every_threshold():
  positive, cious, conf = _random_pairs(7, 60, ties=True)
  thresholds = np.linspace(-0.1, 1.1, 17)
  p, r = extended.precision_recall(*extended.counts_at(positive, cious, conf, thresholds))
  for k, t in enumerate(thresholds):
    assert (p[k], r[k]) == pytest.approx(_loop_pr(positive, cious, conf, t), abs=1e-12)


def _loop_bootstrap(positive, cious, conf, reference, n_bootstrap, seed):
  """The percentile interval of `reference`'s AP and max-F1 over resamples
  drawn one by one (an empty resample of positives scores 0)."""
  idx = np.random.default_rng(seed).integers(0, len(conf), (n_bootstrap, len(conf)))
  aps, f1s = [], []
  for draw in idx:
    pos = [bool(positive[i]) for i in draw]
    ap, f1 = reference(pos, [cious[i] for i in draw], [conf[i] for i in draw]) if any(pos) \
        else (0.0, 0.0)
    aps.append(ap)
    f1s.append(f1)
  return (*np.percentile(aps, [2.5, 97.5]), *np.percentile(f1s, [2.5, 97.5]))


@pytest.mark.parametrize("seed,n,ties", [(0, 9, True), (1, 120, False), (2, 3, False)])
@pytest.mark.parametrize("rule,reference", [("exact", _loop_exact), ("slavc", _loop_slavc)])
def test_ap_intervals_match_a_resample_by_resample_loop(seed, n, ties, rule, reference):
  positive, cious, conf = _random_pairs(seed, n, ties)
  positive[0] = True
  got = extended.ap_max_f1_ci95(positive, cious, conf, rule=rule, n_bootstrap=60, seed=seed,
                                block=7)  # blocks that do not divide the resamples
  want = _loop_bootstrap(positive, cious, conf, reference, 60, seed)
  assert [got[k] for k in ("ap_ci95_lo", "ap_ci95_hi", "max_f1_ci95_lo", "max_f1_ci95_hi")] \
      == pytest.approx(want, abs=1e-12)
  point = extended.ap_max_f1(positive, cious, conf, rule=rule)
  if n > 100:  # a real interval: it holds the point estimate and has width
    assert got["ap_ci95_lo"] < point["ap"] < got["ap_ci95_hi"]
    assert got["max_f1_ci95_lo"] < point["max_f1"] < got["max_f1_ci95_hi"]


def test_ap_intervals_of_degenerate_sets_are_defined():
  zeros = dict.fromkeys(("ap_ci95_lo", "ap_ci95_hi", "max_f1_ci95_lo", "max_f1_ci95_hi"), 0.0)
  assert extended.ap_max_f1_ci95([], [], []) == zeros
  assert extended.ap_max_f1_ci95(np.zeros(5, bool), np.zeros(5), np.arange(5.0)) == zeros
  assert extended.ap_max_f1_ci95([True], [1.0], [0.5], n_bootstrap=0) == zeros
  # perfect: every visible pair found and more confident than every off-screen one
  visible = np.arange(40) < 20
  perfect = extended.ap_max_f1_ci95(visible, np.where(visible, 0.9, 0.0),
                                    np.where(visible, 0.6 + 0.01 * np.arange(40), np.nan))
  assert perfect["ap_ci95_lo"] == perfect["ap_ci95_hi"] == 1.0


# ---------------------------------------------------------------------------
# Known answers.
# ---------------------------------------------------------------------------

def test_perfect_maps_with_perfect_confidence_give_ap_1():
  positive = np.array([True] * 30 + [False] * 20)
  cious = np.where(positive, 1.0, 0.0)
  conf = np.where(positive, 0.9, 0.1) + np.linspace(0, 0.01, 50)
  got = extended.ap_max_f1(positive, cious, conf)
  assert got["ap"] == pytest.approx(1.0, abs=1e-12) and got["max_f1"] == 1.0
  assert 0.1 < got["max_f1_conf"] <= 0.91
  # The released code's thresholds leave out the top one: a little below 1.
  slavc = extended.ap_max_f1(positive, cious, conf, rule="slavc")
  assert 0.9 < slavc["ap"] < 1.0 and slavc["max_f1"] == 1.0


def test_a_confidence_that_ignores_the_audio_scores_the_positive_rate():
  """Each image once with its own sound (visible, perfect map) and once with
  an off-screen sound: a confidence that only sees the image gives both the
  same number, so every threshold keeps precision at the positive rate."""
  rng = np.random.default_rng(0)
  per_image = rng.random(100)
  positive = np.concatenate([np.ones(100, bool), np.zeros(100, bool)])
  cious = positive.astype(float)
  conf = np.concatenate([per_image, per_image])
  assert extended.ap_max_f1(positive, cious, conf)["ap"] == pytest.approx(0.5, abs=1e-12)
  # one constant confidence: one threshold, everything detected
  positive3 = np.array([True, True, False, True, False, False, False, False])
  got = extended.ap_max_f1(positive3, positive3.astype(float), np.full(8, 0.3))
  assert got["ap"] == pytest.approx(3 / 8)
  assert got["max_f1"] == pytest.approx(2 * 3 / 8 / (1 + 3 / 8))
  # a random confidence: about the positive rate
  positive4 = rng.random(4000) < 0.3
  random = extended.ap_max_f1(positive4, positive4.astype(float), rng.random(4000))
  assert abs(random["ap"] - positive4.mean()) < 0.03


def test_a_visible_source_found_in_the_wrong_place_is_a_false_positive():
  positive = np.array([True, True])
  got = extended.ap_max_f1(positive, np.array([0.2, 0.9]), np.array([0.9, 0.1]))
  # top: the wrong place (P 0, R 0 of 1 since FN 1); then both: P 1/2, R 1
  assert got["ap"] == pytest.approx(0.5)
  # right place on top (P 1, R 1/2), then the wrong one: P 1/2, R 1 (no FN left)
  assert extended.ap_max_f1(positive, np.array([0.9, 0.2]),
                            np.array([0.9, 0.1]))["ap"] == pytest.approx(0.75)


@pytest.mark.parametrize("rule", extended.AP_RULES)
def test_degenerate_sets_have_a_defined_score(rule):
  empty = extended.ap_max_f1([], [], [], rule=rule)
  assert empty == {"ap": 0.0, "max_f1": 0.0, "max_f1_conf": 0.0}
  offscreen = extended.ap_max_f1(np.zeros(5, bool), np.zeros(5), np.arange(5.0), rule=rule)
  assert offscreen == {"ap": 0.0, "max_f1": 0.0, "max_f1_conf": 0.0}
  nan_conf = extended.ap_max_f1([True, False, True], [1.0, 0.0, 1.0], [np.nan, 0.2, 0.5], rule=rule)
  assert all(np.isfinite(v) for v in nan_conf.values())
  wrong = extended.ap_max_f1([True, True], [0.0, 0.1], [0.5, 0.5], rule=rule)
  assert wrong["ap"] == 0.0 and wrong["max_f1"] == 0.0
  assert extended.rate([]) == 0.0
  assert extended.confidence_summary([np.nan], "c") == {
      "c_mean": 0.0, "c_p10": 0.0, "c_p50": 0.0, "c_p90": 0.0}


def test_bad_rules_are_named():
  with pytest.raises(ValueError, match="unknown AP rule 'voc'"):
    extended.ap_max_f1([True], [1.0], [1.0], rule="voc")
  with pytest.raises(ValueError, match="unknown confidence 'top5'.*slavc"):
    extended.confidences(np.zeros((1, 2, 2)), "top5")
  with pytest.raises(ValueError, match="unknown probe 'music'"):
    extended.probe_spectrogram("music", audio_lib.STAMPS)


# ---------------------------------------------------------------------------
# The confidence.
# ---------------------------------------------------------------------------

def _torch_bicubic_loop(m, size):
  """PyTorch's upsample_bicubic2d, align_corners=True, one pixel at a time."""
  a = -0.75

  def w(x):
    x = abs(x)
    if x <= 1:
      return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
      return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0

  h, wd = m.shape
  out = np.zeros((size, size))
  for oy in range(size):
    sy = oy * (h - 1) / (size - 1) if size > 1 else 0.0
    y0 = math.floor(sy)
    for ox in range(size):
      sx = ox * (wd - 1) / (size - 1) if size > 1 else 0.0
      x0 = math.floor(sx)
      total = 0.0
      for dy in range(-1, 3):
        for dx in range(-1, 3):
          yy, xx = min(max(y0 + dy, 0), h - 1), min(max(x0 + dx, 0), wd - 1)
          total += w(sy - (y0 + dy)) * w(sx - (x0 + dx)) * m[yy, xx]
      out[oy, ox] = total
  return out


@pytest.mark.parametrize("shape,size", [((4, 4), 17), ((3, 5), 9), ((7, 7), 7), ((1, 1), 5)])
def test_bicubic_matches_the_pytorch_formula(shape, size):
  m = np.random.default_rng(0).standard_normal(shape)
  if shape[0] != shape[1]:
    got = np.einsum("Hh,hw,Ww->HW", extended.bicubic_matrix(size, shape[0]), m,
                    extended.bicubic_matrix(size, shape[1]))
  else:
    got = extended.bicubic_align_corners(m, size)
  np.testing.assert_allclose(got, _torch_bicubic_loop(m, size), atol=1e-5)


def test_confidences_of_flat_and_peaked_maps():
  flat = np.full((3, 4, 4), 0.2, np.float32)
  np.testing.assert_allclose(extended.confidences(flat, "slavc", 16), 0.6, atol=1e-6)
  np.testing.assert_allclose(extended.confidences(flat, "peak", 16), 0.2, atol=1e-6)
  np.testing.assert_allclose(extended.confidences(flat, "mean", 16), 0.2, atol=1e-6)
  ones = np.ones((1, 5, 5), np.float32)
  assert extended.confidences(ones, "slavc", 16)[0] == pytest.approx(1.0, abs=1e-6)
  peaked = np.full((1, 5, 5), -1.0, np.float32)
  peaked[0, 2, 2] = 1.0
  assert 0.0 < extended.confidences(peaked, "slavc", 16)[0] < 0.6
  assert extended.confidences(np.zeros((0, 4, 4)), "slavc", 16).shape == (0,)
  # an increasing change of the maps leaves the ranking, hence AP, as it is
  rng = np.random.default_rng(1)
  maps = rng.standard_normal((20, 4, 4)).astype(np.float32) * 0.3
  positive = rng.random(20) < 0.5
  a = extended.ap_max_f1(positive, positive, extended.confidences(maps, "slavc", 16))
  b = extended.ap_max_f1(positive, positive, extended.confidences(2 * maps + 0.1, "slavc", 16))
  assert a == pytest.approx({**b, "max_f1_conf": a["max_f1_conf"]})


@pytest.mark.parametrize("probe", sorted(extended.PROBES))
def test_probe_clips_give_finite_spectrograms(probe):
  for front_end in (audio_lib.STAMPS, audio_lib.LVS_TRAIN):
    spec = extended.probe_spectrogram(probe, front_end)
    assert spec.shape == audio_lib.spectrogram_shape(front_end) and np.isfinite(spec).all()


# ---------------------------------------------------------------------------
# The evaluator on a split with visible and off-screen pairs.
# ---------------------------------------------------------------------------

SIZE = 16


class _Split:
  """A data source: images with one object each; `offscreen` of them hold no
  box (their sound's source is not in the frame); metadata as stamps'."""

  def __init__(self, n, offscreen, front_end):
    rng = np.random.default_rng(0)
    self.split = "test_offscreen"
    self.dataset_info = types.SimpleNamespace(metadata={
        "gt_format": f"pixels:{SIZE}", "offscreen_splits": ["test_offscreen"]})
    spec = np.zeros(audio_lib.spectrogram_shape(front_end), np.float16)
    self.examples = []
    for i in range(n):
      box = np.array([[0, 0, 8, 8]] if i % 2 == 0 else [[8, 8, 16, 16]], np.float32)
      self.examples.append({
          "id": f"s{i}".encode(), "image": rng.integers(0, 255, (SIZE, SIZE, 3), np.uint8),
          "spectrogram": spec + np.float16(i),
          "gt_boxes": np.zeros((0, 4), np.float32) if i in offscreen else box,
          "silent_boxes": np.array([[8, 0, 16, 8]], np.float32)})

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, i):
    return self.examples[i]


def _config(probes=()):
  from soundloc_jax.configs import default
  config = default.get_config()
  config.dataset.image_size = config.eval.size = SIZE
  config.audio = default.audio_config(audio_lib.STAMPS)
  config.eval.batch_size = 3
  config.eval.protocol = "median"
  config.eval.extended.probes = tuple(probes)
  return config


def _oracle(visible_maps):
  """Responses: the object's box hot for the pairs that sound (by the
  spectrogram's value, the example's index), flat -0.5 (confidence 0.25) for
  silence, noise and the off-screen pairs."""
  def predict(image, spectrogram):
    index = np.asarray(spectrogram)[:, 0, 0].astype(int)
    live = np.asarray(spectrogram).std(axis=(1, 2)) == 0   # probes are not constant
    return np.stack([visible_maps[i] if ok and i in visible_maps else np.full((4, 4), -0.5)
                     for i, ok in zip(index, live)]).astype(np.float32)
  return predict


def test_the_evaluator_scores_visible_and_offscreen_pairs():
  n, offscreen = 8, {1, 4, 6}
  source = _Split(n, offscreen, audio_lib.STAMPS)
  assert annotations.source_is_annotated(source)
  maps = {}
  for i in range(n):
    m = np.full((4, 4), -0.5)
    if i % 2 == 0:
      m[:2, :2] = 0.9
    else:
      m[2:, 2:] = 0.9
    if i not in offscreen:
      maps[i] = m
  config = _config(probes=("silence", "noise"))
  result = evaluators.SplitEvaluator("test_offscreen", source, config,
                                     ("localization", "extended")).run(_oracle(maps))
  m = result.metrics
  assert m["n_visible"] == 5 and m["n_offscreen"] == 3 and m["n"] == 8
  assert m["ap"] == pytest.approx(1.0) and m["max_f1"] == 1.0
  assert m["false_alarm"] == 0.0 and m["lit_offscreen"] == 0.0 and m["false_alarm_f1"] == 0.0
  # flat maps (off-screen, probes) have the defined confidence (-0.5 + 1) / 2
  assert m["conf_offscreen_mean"] == pytest.approx(0.25)
  assert m["conf_silence_mean"] == pytest.approx(0.25) and m["silence_ap"] == pytest.approx(1.0)
  assert m["own_above_noise"] == 1.0
  # localization scores the visible pairs only
  assert result.metrics["ciou_median"] > 0 and np.isfinite(result.cious).all()
  assert all(np.isfinite(v) for v in m.values())


def test_flat_maps_everywhere_get_a_defined_score():
  """A map that never changes, whatever the image and the sound: every pair
  ties, so AP is the positive rate of correctly localised pairs; nothing is NaN."""
  source = _Split(6, {0, 1, 2}, audio_lib.STAMPS)
  config = _config(probes=("silence",))
  for value in (0.0, 0.3, -1.0):
    result = evaluators.SplitEvaluator("test_offscreen", source, config,
                                       ("localization", "silent_object", "extended")).run(
        lambda image, spec: np.full((len(image), 4, 4), value, np.float32))
    m = result.metrics
    assert all(np.isfinite(v) for v in m.values()), m
    assert m["conf_visible_mean"] == pytest.approx((value + 1) / 2)
    assert m["max_f1"] <= 1.0 and m["ap"] == pytest.approx(m["ap"])
    assert m["false_alarm"] == float((value + 1) / 2 >= 0.5)


def test_a_split_of_offscreen_pairs_only_and_nan_maps_do_not_crash():
  source = _Split(4, {0, 1, 2, 3}, audio_lib.STAMPS)
  config = _config(probes=("noise",))
  evals = ("localization", "silent_object", "extended")
  result = evaluators.SplitEvaluator("test_offscreen", source, config, evals).run(
      lambda image, spec: np.random.default_rng(0).standard_normal((len(image), 4, 4)))
  m = result.metrics
  assert m["ap"] == 0.0 and m["n_visible"] == 0 and m["n_offscreen"] == 4
  assert m["ciou"] == 0.0 and m["silent"] == 0.0
  assert all(np.isfinite(v) for v in m.values())
  nan = evaluators.SplitEvaluator("test_offscreen", _Split(4, {0}, audio_lib.STAMPS), config,
                                  ("extended",)).run(
      lambda image, spec: np.full((len(image), 4, 4), np.nan, np.float32))
  assert nan.metrics["n_conf_nan"] == 4
  assert all(np.isfinite(v) for v in nan.metrics.values())


def test_unknown_probe_and_mismatched_front_end_are_named():
  from soundloc_jax.errors import ConfigError, DatasetError
  source = _Split(2, {0}, audio_lib.STAMPS)
  config = _config(probes=("chirp",))
  with pytest.raises(ConfigError, match="probes: unknown probe 'chirp'"):
    evaluators.SplitEvaluator("t", source, config, ("extended",)).run(
        lambda image, spec: np.zeros((len(image), 4, 4)))
  config = _config(probes=("silence",))
  config.audio = _config().audio
  config.audio.n_mels = 32
  with pytest.raises(DatasetError, match="probe 'silence' has a"):
    evaluators.SplitEvaluator("t", source, config, ("extended",)).run(
        lambda image, spec: np.zeros((len(image), 4, 4)))


# ---------------------------------------------------------------------------
# A real model on silence and noise.
# ---------------------------------------------------------------------------

def test_a_real_model_on_silence_and_noise_gives_finite_scores(demo_data_dir, tmp_path):
  """The (untrained) model on the demo's test split with the silence and noise
  probes: no crash, no NaN in any map or score, and the report is written
  (its JSON holds the nested eval.extended config)."""
  from soundloc_jax import data
  from soundloc_jax import state as train_state
  from soundloc_jax.evaluation import plots
  from tests.helpers import tiny_config
  config = tiny_config(demo_data_dir)
  config.eval.extended.probes = ("silence", "noise")
  name, data_dir = data.prepare_data(config)
  source = data.open_source(name, "test", data_dir)
  graphdef, state = train_state.create_train_state(config, train_state.make_optimizer(config))
  full = train_state.make_predict_fn(graphdef, outputs="all")
  predict = lambda im, sp: full(state["params"], state["batch_stats"], im, sp)  # noqa: E731
  evaluator = evaluators.SplitEvaluator("test", source, config, ("localization", "extended"))
  outputs = evaluator.collect(predict, probes=("silence", "noise"))
  for maps in (outputs.responses, *outputs.probe_responses.values()):
    assert np.isfinite(maps).all()
  result = evaluator.run(predict)
  m = result.metrics
  assert m["n_visible"] == len(source) and m["n_offscreen"] == 0
  assert all(np.isfinite(v) for v in m.values()), m
  assert 0.0 <= m["own_above_silence"] <= 1.0 and 0.0 <= m["silence_ap"] <= 1.0
  assert "extended AP" in result.describe()
  plots.write_report(result, str(tmp_path), source, config)
  assert (tmp_path / "metrics.json").exists()
