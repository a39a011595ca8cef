"""Evaluators: score a model on a split; each yields `(name, value)` pairs.

`SplitEvaluator(name, source, config, evals).run(predict_fn)` runs the model
over the split once (`predict_fn(image, spectrogram)` -> the model's output
dict, or the `[B, h, w]` response alone, one batch at a time), collects what
the evaluators need into `SplitOutputs` and lets each listed evaluator score
it. The result, an `EvalResult`, holds `metrics` (a flat dict of floats;
`result.items()` yields its `(name, value)` pairs, big_vision style, for
logging) and the per-sample arrays reports use (`ids`, `cious`, `ranks`,
`responses`).

Evaluators (`EVALUATORS`; `config.evals` lists them per role):
  "localization"  needs box annotations. `ciou`, `auc` (the headline
                  protocol of `config.eval`: `protocol`, `threshold`,
                  `order`, `size`), their bootstrap interval `ciou_ci95_lo` /
                  `_hi`, `ciou_median` / `auc_median` (the LVS "median"
                  protocol, always, so numbers stay comparable with the
                  papers), `pointing` (the pointing-game hit rate of
                  `protocol.pointing_hits`); per sample: `cious`.
  "retrieval"     held-out audio -> image retrieval among the split's own
                  images, ranked by the peak of their response map: `r1` /
                  `r5` (how often a sound's own image is the top-1 / in the
                  top 5), `median_rank` and the chance levels; per sample:
                  `ranks`. Needs the model's features (an output dict).
  "extended"      the extended protocol (SLAVC; `evaluation.extended`, its
                  rules): `ap`, `max_f1` over the split's pairs, positives
                  those with a box, negatives those without (off-screen),
                  with 95% bootstrap intervals over pairs (`ap_ci95_lo` /
                  `_hi`, `max_f1_ci95_lo` / `_hi`);
                  the confidence distribution; `false_alarm` / `lit_offscreen`,
                  how often a pair with nothing sounding in its image gets a
                  confidence >= `eval.extended.confidence_threshold` (and its
                  peak on an object), `false_alarm_f1` at the threshold
                  max-F1 picks; per probe of `eval.extended.probes`
                  ("silence", "noise": the same images with that sound) the
                  same over the split's positives + every image with the probe.
All also yield `n`. A split without annotations (real data has no annotated
validation split) skips the evaluators that need them and runs
`config.evals.unannotated` as well (`evaluator_names`), so it is scored by
retrieval and never reports a cIoU.

Pairs whose source is off-screen (`SplitOutputs.visible` False: the batch's
`gt_count` is 0) are scored by "extended" alone: "localization" and
"silent_object" score the visible pairs (n = 0 and every score 0 without
one). An evaluator with `needs_probes` gets `SplitOutputs.probe_responses`,
the maps of every image with each probe clip of `eval.extended.probes`.
`score_with_offscreen` scores a split together with its off-screen split
(stamps `test` + `test_offscreen`) as one extended set.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from soundloc_jax import input_pipeline
from soundloc_jax.errors import ConfigError, DatasetError
from soundloc_jax.evaluation import annotations, extended, objects, protocol


@dataclasses.dataclass
class SplitOutputs:
  """The model's outputs over a split, in split order (the evaluators' input)."""
  ids: list
  responses: np.ndarray            # [N, h, w] raw response maps
  gt_maps: np.ndarray | None       # [N, S, S]; None: the split has no annotations
  visual: np.ndarray | None = None  # [N, h, w, d] when an evaluator needs features
  audio: np.ndarray | None = None   # [N, d]
  silent_maps: np.ndarray | None = None   # [N, K, S, S] when the split stores silent boxes
  silent_valid: np.ndarray | None = None  # [N, K]
  # [N] bool: the sample has a box (its source is visible); None: every sample does
  visible: np.ndarray | None = None
  # probe name -> [N, h, w]: the maps with the probe's sound (`eval.extended.probes`)
  probe_responses: dict | None = None

  def visible_index(self) -> np.ndarray:
    """Indices of the samples whose source is visible (all, without `visible`)."""
    n = len(self.ids)
    return np.arange(n) if self.visible is None else np.flatnonzero(self.visible)


@dataclasses.dataclass
class Scores:
  """What one evaluator found: `metrics` (its `(name, value)` pairs), arrays
  per sample (`cious`, `ranks`) and, for localization, the protocol summary."""
  metrics: dict
  per_sample: dict = dataclasses.field(default_factory=dict)
  summary: dict = dataclasses.field(default_factory=dict)

  def items(self):
    return self.metrics.items()


@dataclasses.dataclass(frozen=True)
class Evaluator:
  name: str
  score: Callable[[SplitOutputs, Any], Scores]  # (outputs, config.eval) -> Scores
  metrics: tuple                                # the names it yields
  needs_annotations: bool = False
  needs_features: bool = False
  needs_probes: bool = False


def _zeros(names, n=0) -> dict:
  """Every metric 0.0 and `n`: the defined score of a split with no sample to score."""
  return {**{m: 0.0 for m in names if m != "n"}, "n": n}


def _localization(outputs: SplitOutputs, ev) -> Scores:
  # Only pairs whose source is visible are localized (the extended protocol's
  # off-screen pairs have no box); per-sample cIoU 0.0 for the others.
  keep = outputs.visible_index()
  if keep.size == 0:
    return Scores(_zeros(EVALUATORS["localization"].metrics),
                  {"cious": np.zeros(len(outputs.ids))})
  responses, gt_maps = outputs.responses[keep], outputs.gt_maps[keep]
  cious, summary = protocol.evaluate_maps(
      responses, gt_maps, protocol=ev.protocol, size=ev.size, threshold=ev.threshold,
      order=ev.order, success_threshold=ev.success_threshold)
  _, median = protocol.evaluate_maps(responses, gt_maps, protocol="median", size=ev.size,
                                     success_threshold=ev.success_threshold)
  pointing = protocol.mean_ci95(protocol.pointing_hits(responses, gt_maps, size=ev.size))
  metrics = {"ciou": summary["ciou"], "auc": summary["auc"],
             "ciou_ci95_lo": summary["ciou_ci95"][0], "ciou_ci95_hi": summary["ciou_ci95"][1],
             "ciou_median": median["ciou"], "auc_median": median["auc"], "pointing": pointing[0],
             "pointing_ci95_lo": pointing[1], "pointing_ci95_hi": pointing[2],
             "n": len(keep)}
  full = np.zeros(len(outputs.ids))
  full[keep] = cious
  return Scores(metrics, {"cious": full}, summary)


def _silent_object(outputs: SplitOutputs, ev) -> Scores:
  if outputs.silent_maps is None:
    raise DatasetError("evaluator 'silent_object' needs the silent objects' boxes "
                       "('silent_boxes', e.g. the stamps benchmark), which this split lacks")
  keep = outputs.visible_index()
  if keep.size == 0:
    return Scores(_zeros(EVALUATORS["silent_object"].metrics))
  outputs = dataclasses.replace(
      outputs, ids=[outputs.ids[i] for i in keep], responses=outputs.responses[keep],
      gt_maps=outputs.gt_maps[keep], silent_maps=outputs.silent_maps[keep],
      silent_valid=outputs.silent_valid[keep], visible=None, probe_responses=None)
  scores = objects.silent_object_scores(outputs.responses, outputs.gt_maps, outputs.silent_maps,
                                        outputs.silent_valid, size=ev.size)
  mean, lo, hi = protocol.mean_ci95(scores)
  peaks = objects.peak_on_silent_object(outputs.responses, outputs.gt_maps, outputs.silent_maps,
                                        outputs.silent_valid, size=ev.size)
  peak, peak_lo, peak_hi = protocol.mean_ci95(peaks)
  return Scores({"silent": mean, "silent_ci95_lo": lo, "silent_ci95_hi": hi,
                 "peak_silent": peak, "peak_silent_ci95_lo": peak_lo,
                 "peak_silent_ci95_hi": peak_hi, "n": len(outputs.ids)},
                {"silent": scores, "peak_silent": peaks})


def retrieval_scores(visual: np.ndarray, audio: np.ndarray,
                     block_bytes: int = 1 << 28) -> np.ndarray:
  """`[Na, Nv]`: how strongly sound `a` is found in image `v`, the MAX over
  `v`'s patches of their cosine similarity with `a` (the peak of the response
  map `R = V a`). Max, not mean: a source covers a few patches, and the mean
  would dilute it with the rest of the scene (which the losses push away from
  the sound), so images with a small source would lose to any loosely related
  scene. Blocked over sounds to bound memory (`block_bytes`)."""
  n, h, w, d = visual.shape
  flat = np.asarray(visual, np.float32).reshape(n * h * w, d)
  rows = max(1, block_bytes // (4 * n * h * w))
  out = np.empty((audio.shape[0], n), np.float32)
  for start in range(0, audio.shape[0], rows):
    block = np.asarray(audio[start:start + rows], np.float32) @ flat.T
    out[start:start + rows] = block.reshape(-1, n, h * w).max(axis=-1)
  return out


def retrieval_ranks(scores: np.ndarray) -> np.ndarray:
  """0-based rank of each sound's own image (the diagonal) among all images:
  how many images score strictly higher."""
  own = np.diag(scores)
  return (scores > own[:, None]).sum(axis=1)


def retrieval_metrics(ranks: np.ndarray) -> dict:
  """`r1`, `r5` (top-1 / top-5 accuracy of the true image), the median rank,
  and chance levels for `n` candidates."""
  n = len(ranks)
  return {"r1": float(np.mean(ranks < 1)), "r5": float(np.mean(ranks < 5)),
          "median_rank": float(np.median(ranks)) + 1.0, "r1_chance": 1.0 / n,
          "r5_chance": min(5, n) / n, "n": n}


def _retrieval(outputs: SplitOutputs, ev) -> Scores:
  del ev
  ranks = retrieval_ranks(retrieval_scores(outputs.visual, outputs.audio))
  return Scores(retrieval_metrics(ranks), {"ranks": ranks})


def _object_maps(outputs: SplitOutputs) -> np.ndarray:
  """`[N, 1 + K, S, S]`: each image's objects, the sounding one (if any) and
  the silent ones (zero maps where there are none)."""
  maps = [outputs.gt_maps[:, None]]
  if outputs.silent_maps is not None:
    maps.append(np.asarray(outputs.silent_maps) * np.asarray(outputs.silent_valid)[..., None, None])
  return np.concatenate(maps, axis=1)


def _extended_parts(outputs: SplitOutputs, ev, probes: bool = True):
  """`(metrics, probe_metrics, per_sample)` of the `extended` evaluator."""
  x, n = ev.extended, len(outputs.ids)
  visible = np.ones(n, bool) if outputs.visible is None else np.asarray(outputs.visible, bool)
  cious = np.zeros(n)
  if visible.any():
    cious[visible] = protocol.score_maps(
        outputs.responses[visible], outputs.gt_maps[visible], protocol=ev.protocol, size=ev.size,
        threshold=ev.threshold, order=ev.order)
  conf = extended.confidences(outputs.responses, x.confidence, ev.size)
  lit = extended.lit_objects(outputs.responses, _object_maps(outputs), ev.size)
  confident = np.nan_to_num(conf, nan=-np.inf) >= x.confidence_threshold

  def block(positive, ciou, c, prefix=""):
    """AP, max-F1 and its threshold, and their 95% bootstrap intervals."""
    return {prefix + k: v for k, v in {
        **extended.ap_max_f1(positive, ciou, c, x.iou_threshold, x.ap_rule),
        **extended.ap_max_f1_ci95(positive, ciou, c, x.iou_threshold, x.ap_rule)}.items()}

  def at_f1(scores, c):
    """Negatives (confidences `c`) detected at the threshold max-F1 picks (0.0
    where F1 is 0 everywhere: no operating point)."""
    if scores["max_f1"] <= 0:
      return 0.0
    return extended.rate(np.nan_to_num(c, nan=-np.inf) >= scores["max_f1_conf"])

  main = block(visible, cious, conf)
  metrics = {**main, "n_visible": int(visible.sum()),
             "n_offscreen": int((~visible).sum()), "n_conf_nan": int(np.isnan(conf).sum()),
             **extended.confidence_summary(conf[visible], "conf_visible"),
             **extended.confidence_summary(conf[~visible], "conf_offscreen"),
             "false_alarm": extended.rate(confident[~visible]),
             "lit_offscreen": extended.rate((confident & lit)[~visible]),
             "false_alarm_f1": at_f1(main, conf[~visible])}
  probe_metrics, per_sample = {}, {"confidence": conf}
  for name, responses in ((outputs.probe_responses or {}) if probes else {}).items():
    probe = extended.confidences(responses, x.confidence, ev.size)
    probe_lit = extended.lit_objects(responses, _object_maps(outputs), ev.size)
    probe_confident = np.nan_to_num(probe, nan=-np.inf) >= x.confidence_threshold
    own, other = np.nan_to_num(conf, nan=-np.inf), np.nan_to_num(probe, nan=-np.inf)
    scores = block(np.concatenate([visible[visible], np.zeros(n, bool)]),
                   np.concatenate([cious[visible], np.zeros(n)]),
                   np.concatenate([conf[visible], probe]))
    probe_metrics.update({
        **{f"{name}_{k}": v for k, v in scores.items()},
        f"false_alarm_f1_{name}": at_f1(scores, probe),
        **extended.confidence_summary(probe, f"conf_{name}"),
        f"false_alarm_{name}": extended.rate(probe_confident),
        f"lit_{name}": extended.rate(probe_confident & probe_lit),
        # paired: how often the image's own sound is more confident than the probe
        f"own_above_{name}": extended.rate(((own > other) + 0.5 * (own == other))[visible])})
    per_sample[f"confidence_{name}"] = probe
  return metrics, probe_metrics, per_sample


def _extended(outputs: SplitOutputs, ev) -> Scores:
  metrics, probe_metrics, per_sample = _extended_parts(outputs, ev)
  return Scores({**metrics, **probe_metrics, "n": len(outputs.ids)}, per_sample)


_EXTENDED_BASE = ("ap", "max_f1", "max_f1_conf", *extended.AP_CI_KEYS, "n_visible", "n_offscreen", "n_conf_nan") + tuple(
    f"conf_{w}_{k}" for w in ("visible", "offscreen") for k in ("mean", "p10", "p50", "p90")) + (
    "false_alarm", "lit_offscreen", "false_alarm_f1")
_EXTENDED_PROBE = ("ap", "max_f1", "max_f1_conf", *extended.AP_CI_KEYS)
EXTENDED_METRICS = _EXTENDED_BASE + tuple(
    m for p in extended.PROBES for m in (
        tuple(f"{p}_{k}" for k in _EXTENDED_PROBE)
        + tuple(f"conf_{p}_{k}" for k in ("mean", "p10", "p50", "p90"))
        + (f"false_alarm_{p}", f"false_alarm_f1_{p}", f"lit_{p}", f"own_above_{p}"))) + ("n",)


def concat_outputs(*parts: SplitOutputs) -> SplitOutputs:
  """Several splits' outputs as one (e.g. a test split and its off-screen
  split, the extended protocol's pairs): every part annotated; silent maps
  kept when every part has them; probes dropped."""
  def cat(name):
    values = [getattr(p, name) for p in parts]
    return None if any(v is None for v in values) else np.concatenate(values)
  visible = [np.ones(len(p.ids), bool) if p.visible is None else p.visible for p in parts]
  return SplitOutputs([i for p in parts for i in p.ids], cat("responses"), cat("gt_maps"),
                      silent_maps=cat("silent_maps"), silent_valid=cat("silent_valid"),
                      visible=np.concatenate(visible))


def collect_with_offscreen(config, name: str, source, offscreen_source, predict_fn):
  """`(own, off)`: the outputs of `source` (with the probes of
  `config.eval.extended.probes`) and of its off-screen split, what
  `extended_with_offscreen` scores."""
  own = SplitEvaluator(name, source, config, ("extended",)).collect(
      predict_fn, probes=tuple(config.eval.extended.probes))
  off = SplitEvaluator(f"{name} (off-screen)", offscreen_source, config, ("extended",)).collect(
      predict_fn)
  return own, off


def extended_with_offscreen(own: SplitOutputs, off: SplitOutputs, ev) -> dict:
  """The `extended` metrics (config `ev` = `config.eval`) of a split's outputs
  `own` scored together with its off-screen split's `off`: AP, max-F1, the
  confidence distributions, `false_alarm` / `lit_offscreen` over the union;
  the probes on `own`'s images (`<probe>_*`); `n` counts the union."""
  union, _, _ = _extended_parts(concat_outputs(own, off), ev, probes=False)
  _, probes, _ = _extended_parts(own, ev)
  return {**union, **probes, "n": len(own.ids) + len(off.ids)}


def score_with_offscreen(config, name: str, source, offscreen_source, predict_fn) -> dict:
  """The `extended` metrics of a split scored together with its off-screen
  split (e.g. stamps `test` + `test_offscreen`: each image once with its own
  sound, once with a sound from nowhere in it; each split alone has one kind
  of pair only): `collect_with_offscreen`, then `extended_with_offscreen`.
  The same metric names as the evaluator."""
  own, off = collect_with_offscreen(config, name, source, offscreen_source, predict_fn)
  return extended_with_offscreen(own, off, config.eval)


EVALUATORS = {e.name: e for e in (
    Evaluator("localization", _localization, needs_annotations=True,
              metrics=("ciou", "auc", "ciou_ci95_lo", "ciou_ci95_hi", "ciou_median",
                       "auc_median", "pointing", "pointing_ci95_lo", "pointing_ci95_hi", "n")),
    Evaluator("silent_object", _silent_object, needs_annotations=True,
              metrics=("silent", "silent_ci95_lo", "silent_ci95_hi", "peak_silent",
                       "peak_silent_ci95_lo", "peak_silent_ci95_hi", "n")),
    Evaluator("retrieval", _retrieval, needs_features=True,
              metrics=("r1", "r5", "median_rank", "r1_chance", "r5_chance", "n")),
    Evaluator("extended", _extended, needs_annotations=True, needs_probes=True,
              metrics=EXTENDED_METRICS),
)}


def evaluator_names(evals, annotated: bool, config) -> list[str]:
  """The evaluators a split gets from the list `evals` (e.g.
  `config.evals.validation`): those it can run, plus `config.evals.unannotated`
  when it has no annotations. A ConfigError names an unknown evaluator, or a
  split left with none."""
  requested = list(evals) + ([] if annotated else list(config.evals.unannotated))
  for name in requested:
    if name not in EVALUATORS:
      raise ConfigError(f"config.evals: unknown evaluator {name!r}; available: "
                        f"{', '.join(EVALUATORS)}")
  names = [n for n in dict.fromkeys(requested) if annotated or not EVALUATORS[n].needs_annotations]
  if not names:
    raise ConfigError(f"config.evals: none of {requested} can score a split without "
                      "localization annotations; add 'retrieval' to config.evals.unannotated")
  return names


@dataclasses.dataclass
class EvalResult:
  split: str
  metrics: dict
  ids: list
  cious: np.ndarray                # nan where not localized
  responses: np.ndarray
  gt_maps: np.ndarray | None       # None: the split has no annotations
  summary: dict
  ranks: np.ndarray | None = None  # retrieval rank of each sound's own image
  audio: np.ndarray | None = None  # [N, d] audio embeddings, when an evaluator needed features

  def items(self):
    return self.metrics.items()

  @property
  def localized(self) -> bool:
    return "ciou" in self.metrics

  def describe(self, success_threshold: float = 0.5) -> str:
    """One line: cIoU / AUC (both protocols), the silent-object test and / or
    retrieval R@1 / R@5, as the split's evaluators reported them."""
    m, parts = self.metrics, []
    if self.localized:
      parts.append(f"cIoU@{success_threshold:g} {m['ciou']:.3f} [{m['ciou_ci95_lo']:.3f}, "
                   f"{m['ciou_ci95_hi']:.3f}] AUC {m['auc']:.3f} | median protocol cIoU "
                   f"{m['ciou_median']:.3f} AUC {m['auc_median']:.3f} | pointing "
                   f"{m['pointing']:.3f}")
    if "silent" in m:
      parts.append(f"silent-object test {m['silent']:.3f} [{m['silent_ci95_lo']:.3f}, "
                   f"{m['silent_ci95_hi']:.3f}], peak on a silent object {m['peak_silent']:.3f}")
    if "max_f1" in m:
      parts.append(f"extended AP {m['ap']:.3f} max-F1 {m['max_f1']:.3f} ({m['n_visible']} visible, "
                   f"{m['n_offscreen']} off-screen; false alarm {m['false_alarm']:.3f})")
    if self.ranks is not None:
      parts.append(f"retrieval R@1 {m['r1']:.3f} R@5 {m['r5']:.3f} (chance {m['r1_chance']:.3f}"
                   f" / {m['r5_chance']:.3f})")
    return " | ".join(parts) + f" (n={m['n']})"


class SplitEvaluator:
  """Scores one split with the evaluators `evals` names (module docstring)."""

  def __init__(self, name: str, source, config, evals=("localization",)):
    self.name = name
    self.source = source
    self.config = config
    self.annotated = annotations.source_is_annotated(source)
    self.evaluators = [EVALUATORS[n] for n in evaluator_names(evals, self.annotated, config)]

  def check_metric(self, key: str, what: str, prefix: str = "", dataset: str = "") -> None:
    """ConfigError (naming `what`, e.g. "config.checkpoint.best_metric", and the
    split) unless `key` ("" = none) is `prefix` + a metric this split reports:
    checked before anything runs (an unannotated split reports no localization)."""
    available = [prefix + m for m in dict.fromkeys(
        m for e in self.evaluators for m in e.metrics)]
    if key and key not in available:
      why = "" if self.annotated else ", which has no localization annotations"
      of = f" of {dataset!r}" if dataset else ""
      raise ConfigError(f"{what}={key!r} is not a metric of split {self.name!r}{of}{why}; "
                        f"available: {', '.join(available)}")

  def run(self, predict_fn) -> EvalResult:
    probes = (tuple(self.config.eval.extended.probes)
              if any(e.needs_probes for e in self.evaluators) else ())
    outputs = self.collect(predict_fn, any(e.needs_features for e in self.evaluators), probes)
    metrics, per_sample, summary = {}, {}, {}
    for evaluator in self.evaluators:
      scores = evaluator.score(outputs, self.config.eval)
      metrics.update(scores.items())
      per_sample.update(scores.per_sample)
      summary = summary or scores.summary
    nan = np.full(len(outputs.ids), np.nan, np.float32)
    return EvalResult(self.name, metrics, outputs.ids, per_sample.get("cious", nan),
                      outputs.responses, outputs.gt_maps, summary, per_sample.get("ranks"),
                      outputs.audio)

  def probe_spectrograms(self, probes) -> dict:
    """probe name -> `[F, T]` spectrogram of its clip, with the front end the
    split's spectrograms have (`config.audio`, or the LVS test front end under
    `eval.audio="lvs_test"`). ConfigError names an unknown probe."""
    from soundloc_jax import audio as audio_lib
    front_end = audio_lib.LVS_TEST if self.config.eval.audio == "lvs_test" else self.config.audio
    for name in probes:
      if name not in extended.PROBES:
        raise ConfigError(f"config.eval.extended.probes: unknown probe {name!r}; available: "
                          f"{', '.join(extended.PROBES)}")
    return {name: extended.probe_spectrogram(name, front_end) for name in probes}

  def collect(self, predict_fn, features: bool = False, probes=()) -> SplitOutputs:
    """The split's maps (and with `features` the model's features), gt maps
    and silent-object maps, in the split's order; what `run` scores (also
    for diagnostics, e.g. scripts/map_diagnostics.py). `probes` (names of
    `extended.PROBES`): also the maps of every image with that probe's
    sound. DatasetError when a probe's spectrogram does not have the shape
    of the split's."""
    ev, ds = self.config.eval, self.config.dataset
    responses, gts, ids, visual, audio, silent, silent_valid = [], [], [], [], [], [], []
    visible, probe_specs = [], self.probe_spectrograms(probes)
    probe_maps = {name: [] for name in probes}
    for batch in input_pipeline.eval_batches(
        self.source, batch_size=ev.batch_size, image_size=ds.image_size,
        num_threads=ds.num_workers, gt_format=annotations.gt_format_of(self.source),
        gt_size=ev.size, eval_audio=ev.audio):
      valid = batch["valid"]
      out = predict_fn(batch["image"], batch["spectrogram"])
      if features and not isinstance(out, dict):
        raise DatasetError(
            f"split {self.name!r}: evaluator 'retrieval' needs the model's features (a "
            "predict_fn returning the output dict)" + ("" if self.annotated else
            "; the split has no localization annotations ('box' or 'gt_boxes' with a "
            "gt_format), so retrieval is its only score"))
      outputs = out if isinstance(out, dict) else {"response": out}
      responses.append(np.asarray(outputs["response"], np.float32)[valid])
      if features:
        visual.append(np.asarray(outputs["visual_features"], np.float32)[valid])
        audio.append(np.asarray(outputs["audio_embedding"], np.float32)[valid])
      for name, spec in probe_specs.items():
        if spec.shape != batch["spectrogram"].shape[1:]:
          raise DatasetError(
              f"split {self.name!r}: probe {name!r} has a {spec.shape} spectrogram with "
              f"config.audio, the split's are {batch['spectrogram'].shape[1:]}; set "
              "config.audio to the dataset's front end")
        specs = np.broadcast_to(spec, batch["spectrogram"].shape).astype(batch["spectrogram"].dtype)
        probe_out = predict_fn(batch["image"], specs)
        probe_out = probe_out["response"] if isinstance(probe_out, dict) else probe_out
        probe_maps[name].append(np.asarray(probe_out, np.float32)[valid])
      if "gt_count" in batch:
        visible.append(np.asarray(batch["gt_count"])[valid] > 0)
      if self.annotated:
        gts.append(annotations.gt_maps_from_batch(batch, ev.size, ds.image_size)[valid])
      if "silent_maps" in batch:
        silent.append(np.asarray(batch["silent_maps"])[valid])
        silent_valid.append(np.asarray(batch["silent_valid"])[valid])
      ids.extend(i.decode() if isinstance(i, bytes) else str(i) for i in batch["id"][valid])
    return SplitOutputs(ids, np.concatenate(responses),
                        np.concatenate(gts) if self.annotated else None,
                        np.concatenate(visual) if features else None,
                        np.concatenate(audio) if features else None,
                        np.concatenate(silent) if silent else None,
                        np.concatenate(silent_valid) if silent else None,
                        np.concatenate(visible) if visible else None,
                        {k: np.concatenate(v) for k, v in probe_maps.items()} if probes else None)
