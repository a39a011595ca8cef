"""Every method on one benchmark, same budget, several seeds -> one results table.

  python scripts/compare_methods.py --out=/tmp/compare              # all rows, seeds 0,1,2
  python scripts/compare_methods.py --out=DIR --methods=lvs_vanilla,hardpos --seeds=0
  python scripts/compare_methods.py --out=DIR --table_only          # re-print from finished runs
  python scripts/compare_methods.py --out=DIR --rescore             # score them again, re-print
  python scripts/compare_methods.py --out=DIR --benchmark=stamps --data_dir=D \
      --methods=untrained,centre,icl_initial,icl_full,lvs_vanilla,lvs
                                               # the real-media benchmark (data_builders/stamps)

`--benchmark=demo` (default) trains on av_digits; `--benchmark=stamps` uses
each method file's `stamps` preset (its budget: 12 epochs unless `--epochs`)
on the stamps build in `--data_dir`, scores `test` and `test_unseen`, and
adds the columns that benchmark supports: the silent-object test, pointing
and cIoU intervals, retrieval R@1, and the median rule's cIoU ceiling. Two
rows need no training: `untrained` (the ICL model saved at step 0,
`num_epochs=0`) and `centre` (a fixed Gaussian guess at the image centre,
`evaluation.baselines.centre_prior`; pointing has to beat it, not only
chance). `--benchmark=stamps128_imagenet` (and `stamps_imagenet`) is the same
with the ImageNet visual stream (import it first: `python -m
soundloc_jax.tools.import_efficientnet_lite0 --out=weights/efficientnet_lite0`);
it adds `objectness` (the ImageNet objectness map alone, EZ-VSL's OGL prior
with no audio, which an ImageNet map's pointing has to beat) and `ezvsl_ogl`
(the `ezvsl` row's model scored with OGL, no training).

Each (method, seed) trains with `python -m soundloc_jax.main` in
`OUT/<method>/seed<S>` for `--epochs` epochs with `--config.seed=S` and
nothing else changed, so every row has the same data, batch size, optimizer
and number of steps. HardPos rows mine their neighbours (`python -m
soundloc_jax.mine`) from the Vanilla-LVS run of the same seed, which is
itself a row of the table (mining is not counted in the budget; the paper
does the same). LVS-style rows use `negative_pooling=masked` (see
`MASKED`). Rows ending in `_init` start from the Vanilla-LVS row's run of
the same seed (`model.init_from`) and train `--epochs` more; the ICL ones
(`icl_initial_init`, `icl_itr_init`, `icl_full_init`) iterate from the first
step with that run as their first teacher (`init_epochs=0`, no guard). A
finished run (its `eval/test/metrics.json` exists) is not run again, and an
interrupted one resumes, so rerunning the same command finishes the table. The table reports, per method, the mean and the spread
(min..max over seeds) of the test cIoU@0.5 and AUC of the demo's headline
protocol (fixed threshold, `configs/default.py`), the mean of the per-seed
95% bootstrap intervals of cIoU, the median-protocol (LVS) numbers and the
pointing-game hit rate (`evaluation.protocol.pointing_hits`: the map's peak on the
sounding digit's box). `--rescore` scores finished runs again with the
current evaluator. On stamps, every row also gets the extended protocol
(`score_extended`, no retraining): AP and max-F1 over each test split with
its off-screen split, and the silence / noise probes (`eval/<split>/extended.json`).
It is written to `OUT/results.md` and printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import results_tables  # scripts/, next to this file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
from soundloc_jax.configs import datasets  # noqa: E402  (after the path, for a clone)

# LVS-style losses on the demo need LVS's released-code negatives: with Eq. 5's
# plain spatial means they collapse (docs/methods.md, LVS and Vanilla-LVS).
MASKED = ("--config.method.negative_pooling=masked",)

# name -> (config arg, the baseline row whose run HardPos mines, description,
#          flags of this row)
METHODS = {
    "lvs_vanilla": ("configs/lvs.py:,variant=vanilla", None,
                    "Vanilla-LVS (no tri-map, no hard negative)", MASKED),
    "lvs": ("configs/lvs.py", None, "LVS (tri-map + hard negative)", MASKED),
    "hardpos": ("configs/hard_positive.py", "lvs_vanilla", "HardPos (mined from Vanilla-LVS)",
                MASKED),
    "random_hp": ("configs/hard_positive.py:,neighbours=random", None, "Random HP", MASKED),
    "ezvsl": ("configs/ezvsl.py", None, "EZ-VSL (max over patches, both directions)", ()),
    "icl_initial": ("configs/iterative.py:,ablation=initial", None, "ICL initial (Eq. 3 only)", ()),
    "icl_itr": ("configs/iterative.py:,ablation=itr", None, "ICL +itr", ()),
    "icl_itr_intra": ("configs/iterative.py:,ablation=itr_intra", None, "ICL +itr +intra", ()),
    "icl_itr_inter": ("configs/iterative.py:,ablation=itr_inter", None, "ICL +itr +inter", ()),
    "icl_full": ("configs/iterative.py:,ablation=full", None, "ICL full (Eq. 7)", ()),
}
# The negatives' anchor study (docs/notes): HardPos (all four positives), its
# `b` control (P_b alone with HardPos's negative set), P_b + P_a (the audio
# neighbour's positive alone, the one the anchor is about) and Random HP,
# each with the three anchors of `method.negative_anchor`.
for _anchor in ("audio", "image", "both"):
  _flags = MASKED + (f"--config.method.negative_anchor={_anchor}",)
  METHODS[f"hp_{_anchor}"] = ("configs/hard_positive.py", "lvs_vanilla",
                              f"HardPos, {_anchor}-anchored negatives", _flags)
  METHODS[f"hpb_{_anchor}"] = ("configs/hard_positive.py", "lvs_vanilla",
                               f"P_b only (control), {_anchor}-anchored negatives",
                               _flags + ("--config.method.positives=b",))
  METHODS[f"hpa_{_anchor}"] = ("configs/hard_positive.py", "lvs_vanilla",
                               f"P_b + P_a (audio neighbour only), {_anchor}-anchored negatives",
                               _flags + ("--config.method.positives=ba",))
  METHODS[f"rhp_{_anchor}"] = ("configs/hard_positive.py:,neighbours=random", None,
                               f"Random HP, {_anchor}-anchored negatives", _flags)
# ICL x HardPos (issue 31; docs/methods.md, docs/notes/2026-12-08-icl-hardpos.md):
# the method with its defaults, and one switch changed per row, so each piece
# it adds to ICL full can be measured: `ihp_b_image` is ICL full with HardPos's
# negative set (mined neighbours left out), `ihp_b` adds the both-anchored
# rows, `ihp_ba` / `ihp_bv` / `ihp_bav` the mined positives one by one (the
# method is "bavc"); then the mined region, Eq. 6's relation, the anchor, the
# background and Random HP's neighbours. Mined rows mine from the Vanilla-LVS
# row of the same seed, as HardPos.
_IHP = "configs/icl_hardpos.py"
for _name, _config, _description, _flags in (
    ("icl_hardpos", _IHP, "ICL x HardPos (teacher regions, mined positives)", ()),
    ("ihp_b_image", _IHP, "ICL x HardPos, P_b only, image anchor (ICL full, mined left out)",
     ("--config.method.positives=b", "--config.method.negative_anchor=image")),
    ("ihp_b", _IHP, "ICL x HardPos, P_b only (both anchors)", ("--config.method.positives=b",)),
    ("ihp_ba", _IHP, "ICL x HardPos, P_b + P_a", ("--config.method.positives=ba",)),
    ("ihp_bv", _IHP, "ICL x HardPos, P_b + P_v", ("--config.method.positives=bv",)),
    ("ihp_bav", _IHP, "ICL x HardPos, P_b + P_a + P_v", ("--config.method.positives=bav",)),
    ("ihp_soft", _IHP, "ICL x HardPos, mined pairs soft-masked (HardPos's region)",
     ("--config.method.mined_region=soft",)),
    ("ihp_inter_mined", _IHP, "ICL x HardPos, Eq. 6 replaced by the mined audio sets",
     ("--config.method.inter_positives=mined",)),
    ("ihp_inter_off", _IHP, "ICL x HardPos, Eq. 6 off", ("--config.method.inter_positives=off",)),
    ("ihp_image", _IHP, "ICL x HardPos, image-anchored negatives",
     ("--config.method.negative_anchor=image",)),
    ("ihp_audio", _IHP, "ICL x HardPos, audio-anchored negatives",
     ("--config.method.negative_anchor=audio",)),
    ("ihp_no_intra", _IHP, "ICL x HardPos, no background negatives (Eq. 5 off)",
     ("--config.method.use_intra=False",))):
  METHODS[_name] = (_config, "lvs_vanilla", _description, _flags)
METHODS["ihp_random"] = (_IHP + ":,neighbours=random", None,
                         "ICL x HardPos, random neighbours (Random HP's)", ())
# Rows without training: the model at step 0, and a fixed centre guess.
METHODS["untrained"] = ("configs/iterative.py", None, "untrained (step 0)",
                        ("--config.num_epochs=0",))
METHODS["centre"] = (None, None, "centre guess (Gaussian, sigma = side / 4)", ())
# The ImageNet benchmarks (`*_imagenet`): EZ-VSL's object-guided localisation
# (`config.eval.ogl`, evaluation/objectness.py) from the imported classifier.
# `objectness` is its map alone (alpha 0: no audio), on the step-0 model;
# `ezvsl_ogl` scores the `ezvsl` row's final model with OGL (alpha 0.4) and
# trains nothing (`SCORED_FROM`: the run it starts from, 0 epochs).
_OGL = (f"--config.eval.ogl.weights={datasets.IMAGENET_WEIGHTS}",)
METHODS["objectness"] = ("configs/iterative.py", None,
                         "ImageNet objectness map alone (OGL, no audio)",
                         ("--config.num_epochs=0", "--config.eval.ogl.alpha=0.0") + _OGL)
METHODS["ezvsl_ogl"] = ("configs/ezvsl.py", None, "EZ-VSL + OGL (its full method, alpha 0.4)",
                        ("--config.num_epochs=0", "--config.model.init_visual=") + _OGL)
SCORED_FROM = {"ezvsl_ogl": "ezvsl"}
# `<row>_init`: the same row started from the Vanilla-LVS run of the same seed
# (`model.init_from`, both streams; fresh optimizer and step) and trained for
# as many epochs again; `lvs_vanilla_init` is that baseline trained on.
INIT_FROM = "lvs_vanilla"
# ICL rows from Vanilla-LVS iterate from the first step, with that run itself as
# the first teacher (no Eq. 3 epochs, no guard): they ask whether Eq. 4-7 keep a
# map that already localizes (a stand-in for the paper's ImageNet start).
_ICL_FROM_TEACHER = ("--config.method.init_epochs=0", "--config.method.teacher_guard=False")
for _name in ["lvs_vanilla"] + [f"{p}_{a}" for p in ("hp", "hpb", "rhp")
                                for a in ("audio", "image", "both")] + [
                                    f"icl_{r}" for r in ("initial", "itr", "full")] + [
                                        "icl_hardpos"]:
  _config, _baseline, _description, _flags = METHODS[_name]
  if _name.startswith("icl_"):
    _flags = _flags + _ICL_FROM_TEACHER
  METHODS[f"{_name}_init"] = (_config, _baseline, _description + ", from Vanilla-LVS", _flags)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="directory for all runs and results.md")
  p.add_argument("--methods", default=",".join(METHODS),
                 help=f"comma-separated subset of: {', '.join(METHODS)}")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--epochs", type=int, default=None,
                 help="epochs per run, the same for all (default: 12 on the demo, the "
                      "preset's budget on another benchmark)")
  p.add_argument("--benchmark", default="demo", choices=sorted(BENCHMARKS),
                 help="demo: av_digits; stamps / stamps128: the real-media benchmark at "
                      "96 / 128 px (needs --data_dir); *_imagenet: the same with the "
                      "ImageNet visual stream")
  p.add_argument("--data_dir", default="", help="where the benchmark's dataset is built")
  p.add_argument("--extra", action="append", default=[],
                 help="extra --config.x=y flag for every run (repeatable)")
  p.add_argument("--table_only", action="store_true", help="only collect finished runs")
  p.add_argument("--rescore", action="store_true",
                 help="score every finished run's final checkpoint on the test split again "
                      "(after the evaluator gained a metric), then print the table")
  p.add_argument("--rescore_extended", action="store_true",
                 help="with --rescore: only the extended protocol (AP, max-F1 and their "
                      "intervals), not the test splits' own evaluation")
  args = p.parse_args(argv)
  args.methods = [m for m in args.methods.split(",") if m]
  unknown = sorted(set(args.methods) - set(METHODS))
  if unknown:
    p.error(f"unknown method(s) {unknown}; available: {', '.join(METHODS)}")
  args.seeds = [int(s) for s in args.seeds.split(",") if s]
  if args.epochs is None and args.benchmark == "demo":
    args.epochs = 12
  return args


# benchmark -> the dataset preset of configs/datasets.py its runs use ("": the demo)
BENCHMARKS = {"demo": "", "stamps": "stamps", "stamps128": "stamps128",
              "stamps_imagenet": "stamps_imagenet", "stamps128_imagenet": "stamps128_imagenet"}


def test_splits(benchmark: str) -> tuple[str, ...]:
  """The splits a benchmark's runs are scored on: its preset's `test_splits`
  (the demo's: the default config's)."""
  from soundloc_jax.configs import datasets, default
  preset = BENCHMARKS[benchmark]
  if not preset:
    return tuple(default.get_config().dataset.test_splits)
  return tuple(datasets.PRESETS[preset]["test_splits"])


def config_arg(config: str, benchmark: str) -> str:
  """`configs/x.py:ARG` with the benchmark's preset as ARG's first part."""
  preset = BENCHMARKS[benchmark]
  path, _, arg = config.partition(":")
  options = arg.split(",")[1:] if arg else []
  return f"{path}:{','.join([preset] + options)}" if (preset or options) else path


def _run(cmd: list[str], log_path: str) -> None:
  print("$ " + " ".join(cmd), flush=True)
  t0 = time.time()
  with open(log_path, "a") as log:
    proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  if proc.returncode:
    raise SystemExit(f"command failed (exit {proc.returncode}); see {log_path}")
  print(f"  done in {time.time() - t0:.0f} s", flush=True)


def workdir_of(out: str, method: str, seed: int) -> str:
  return os.path.join(out, method, f"seed{seed}")


def test_metrics_path(workdir: str, split: str = "test") -> str:
  return os.path.join(workdir, "eval", split, "metrics.json")


def finished(args, workdir: str) -> bool:
  return all(os.path.exists(test_metrics_path(workdir, split))
             for split in test_splits(args.benchmark))


def train_one(args, method: str, seed: int) -> None:
  workdir = workdir_of(args.out, method, seed)
  if finished(args, workdir):
    return
  config, baseline, _, own_flags = METHODS[method]
  if config is None:  # the centre guess: nothing to train
    return score_centre(args, workdir)
  epochs = [] if args.epochs is None else [f"--config.num_epochs={args.epochs}"]
  data_dir = [f"--config.dataset.data_dir={args.data_dir}"] if args.data_dir else []
  flags = [f"--config={config_arg(config, args.benchmark)}", f"--workdir={workdir}",
           f"--config.seed={seed}", *epochs, *data_dir, *own_flags, *args.extra]
  if baseline is not None:
    base_dir = workdir_of(args.out, baseline, seed)
    train_one(args, baseline, seed)
    neighbours = os.path.join(base_dir, "neighbours.npz")
    if not os.path.exists(neighbours):
      _run([sys.executable, "-m", "soundloc_jax.mine", f"--workdir={base_dir}"],
           os.path.join(base_dir, "mine.log"))
    flags.append(f"--config.method.neighbours_path={neighbours}")
  if method.endswith("_init"):
    train_one(args, INIT_FROM, seed)
    flags.append(f"--config.model.init_from={workdir_of(args.out, INIT_FROM, seed)}")
  if method in SCORED_FROM:
    train_one(args, SCORED_FROM[method], seed)
    flags.append(f"--config.model.init_from={workdir_of(args.out, SCORED_FROM[method], seed)}")
  os.makedirs(workdir, exist_ok=True)
  _run([sys.executable, "-m", "soundloc_jax.main", *flags], os.path.join(workdir, "train.log"))


def apply_extra(config, extra: list[str]):
  """`--extra` flags (`--config.a.b=value`) set on `config` as main's flags
  set them (a literal where the value parses as one, else the string)."""
  import ast
  for flag in extra:
    if not flag.startswith("--config.") or "=" not in flag:
      raise SystemExit(f"--extra={flag!r}: expected --config.<key>=<value>")
    key, _, value = flag[len("--config."):].partition("=")
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    config.update_from_flattened_dict({key: value})
  return config


def score_centre(args, workdir: str) -> None:
  """The centre guess scored like a run, on the data the runs read (the
  `--extra` flags apply): `eval/<split>/metrics.json`."""
  import numpy as np

  from soundloc_jax import data
  from soundloc_jax.configs import iterative
  from soundloc_jax.evaluation import baselines, evaluators
  config = iterative.get_config(BENCHMARKS[args.benchmark])
  if args.data_dir:
    config.dataset.data_dir = args.data_dir
  apply_extra(config, args.extra)
  name, data_dir = data.prepare_data(config)
  evals = tuple(e for e in config.evals.test if not evaluators.EVALUATORS[e].needs_features)
  for split in test_splits(args.benchmark):
    source = data.open_source(name, split, data_dir)
    prior = baselines.centre_prior(1, config.eval.size)[0]
    result = evaluators.SplitEvaluator(split, source, config, evals).run(
        lambda image, spectrogram: np.broadcast_to(prior, (len(image),) + prior.shape))
    os.makedirs(os.path.dirname(test_metrics_path(workdir, split)), exist_ok=True)
    with open(test_metrics_path(workdir, split), "w") as f:
      json.dump(result.metrics, f, indent=1)
    print(f"centre guess, {split}: {result.describe()}", flush=True)


# The extended protocol on a benchmark (docs/evaluation.md): each test split
# with its off-screen split, and the probes played to its images.
OFFSCREEN_OF = {"test": "test_offscreen", "test_unseen": "test_unseen_offscreen"}
PROBES = ("silence", "noise")


def extended_path(workdir: str, split: str) -> str:
  return os.path.join(workdir, "eval", split, "extended.json")


def score_extended(args, method: str, workdir: str) -> None:
  """AP, max-F1 and the off-screen / probe rates of a finished row (its final
  checkpoint, or the centre guess) on each test split with its off-screen
  split (`evaluators.score_with_offscreen`), written to
  `eval/<split>/extended.json`; no training. A build without the off-screen
  splits is named and skipped (build the benchmark again to add them)."""
  import numpy as np

  from soundloc_jax import data
  from soundloc_jax.evaluation import baselines, evaluators
  if METHODS[method][0] is None:
    from soundloc_jax.configs import iterative
    config = apply_extra(iterative.get_config(BENCHMARKS[args.benchmark]), args.extra)
    prior = baselines.centre_prior(1, config.eval.size)[0]

    def predict(image, spectrogram):
      return np.broadcast_to(prior, (len(image),) + prior.shape)
  else:  # the maps evaluate.evaluate_splits scores (with OGL where the run's config has it)
    from soundloc_jax import inference
    from soundloc_jax import state as state_lib
    loc = inference.load(workdir)
    config = loc.config
    full = state_lib.make_predict_fn(loc.graphdef, outputs="all")
    if "ogl" in config.eval and config.eval.ogl.weights:
      from soundloc_jax.evaluation import objectness
      full = objectness.with_ogl(full, config.eval.ogl, config.eval.size)
    predict = lambda image, spectrogram: full(  # noqa: E731
        loc.params, loc.batch_stats, image, spectrogram)
  if args.data_dir:
    config.dataset.data_dir = args.data_dir
  config.eval.extended.probes = PROBES
  name, data_dir = data.prepare_data(config)
  for split in test_splits(args.benchmark):
    offscreen = OFFSCREEN_OF.get(split)
    try:
      sources = [data.open_source(name, s, data_dir) for s in (split, offscreen)]
    except Exception as e:  # noqa: BLE001  tfds names the missing split
      print(f"{method} {workdir}: no {offscreen} split in {name} ({type(e).__name__}: {e}); "
            "build the benchmark again to add it; AP / max-F1 left out", flush=True)
      return
    metrics = evaluators.score_with_offscreen(config, split, *sources, predict)
    with open(extended_path(workdir, split), "w") as f:
      json.dump({"offscreen_split": offscreen, "probes": list(PROBES),
                 "extended": config.eval.extended.to_dict(), **metrics}, f, indent=1)
    print(f"{method} {split} + {offscreen}: AP {metrics['ap']:.3f} max-F1 {metrics['max_f1']:.3f}"
          f" lit off-screen {metrics['lit_offscreen']:.3f}", flush=True)


def rescore(args) -> None:
  """`--mode=eval` of each finished run, in this process, with its own config;
  on a benchmark with off-screen splits, the extended protocol too."""
  from soundloc_jax import evaluate, workdir
  for method in args.methods:
    for seed in args.seeds:
      workdir_path = workdir_of(args.out, method, seed)
      if METHODS[method][0] is None:  # the centre guess: score it again
        score_centre(args, workdir_path)
      elif finished(args, workdir_path):
        if not args.rescore_extended:
          evaluate.evaluate_checkpoint(workdir.read_config(workdir_path), workdir_path)
      else:
        continue
      if args.benchmark != "demo":
        score_extended(args, method, workdir_path)


def _fmt(values: list[float], interval: tuple[float, float] | None = None) -> str:
  """`mean (min..max) [lo, hi]` of seeds' values, in the one cell format
  `results_tables` reads back (no spread for one seed, no interval if None)."""
  lo, hi = interval or (None, None)
  return results_tables.format_cell({"mean": statistics.fmean(values), "min": min(values),
                                     "max": max(values), "lo": lo, "hi": hi}, len(values))


def _run_ci(m: dict, key: str) -> tuple[float, float] | None:
  """A run's 95% interval of `key`: its stored bootstrap interval; for pointing
  from runs scored before that was stored, the Wilson interval of a proportion
  of n (the same to ~0.002 at n = 500); else None."""
  if f"{key}_ci95_lo" in m:
    return m[f"{key}_ci95_lo"], m[f"{key}_ci95_hi"]
  if key != "pointing":
    return None
  p, n, z = m["pointing"], m["n"], 1.959964
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return centre - half, centre + half


def _cell(found, key) -> str:
  """The runs' `key` with, as interval, the mean over runs of each run's 95%
  interval (left out if one run lacks it); "n/a" if a run lacks `key`."""
  if not all(key in m for m in found):
    return "n/a"
  intervals = [_run_ci(m, key) for m in found]
  interval = None if None in intervals else tuple(map(statistics.fmean, zip(*intervals)))
  return _fmt([m[key] for m in found], interval)


def collect_benchmark(args) -> str:
  """The real-media table: per split, per row, the mean over seeds (min..max)
  with the mean of the seeds' 95% bootstrap intervals."""
  columns = (("pointing", "pointing"), ("peak on a silent object", "peak_silent"),
             ("silent-object test", "silent"),
             ("cIoU@0.5 fixed", "ciou"), ("AUC fixed", "auc"),
             ("cIoU@0.5 median rule", "ciou_median"), ("retrieval R@1", "r1"),
             # the extended protocol with the off-screen split (`score_extended`)
             ("AP (+ off-screen)", "ap"), ("max-F1", "max_f1"),
             ("off-screen lit", "lit_offscreen"), ("own > silence", "own_above_silence"))
  out, epochs = [], set()
  for split in test_splits(args.benchmark):
    rows = [f"\n**{split}**\n", "| method | seeds | " + " | ".join(c for c, _ in columns) + " |",
            "|" + "---|" * (len(columns) + 2)]
    for method in args.methods:
      found = []
      for seed in args.seeds if METHODS[method][0] is not None else args.seeds[:1]:
        workdir = workdir_of(args.out, method, seed)
        if os.path.exists(test_metrics_path(workdir, split)):
          with open(test_metrics_path(workdir, split)) as f:
            found.append(json.load(f))
          if os.path.exists(extended_path(workdir, split)):
            with open(extended_path(workdir, split)) as f:
              extra = json.load(f)
            found[-1].update({k: v for k, v in extra.items() if k not in found[-1]})
          if os.path.exists(os.path.join(workdir, "config.json")):
            with open(os.path.join(workdir, "config.json")) as f:
              epochs.add(json.load(f)["num_epochs"])
      cells = [_cell(found, key) if found else "" for _, key in columns]
      rows.append(f"| {METHODS[method][2]} | {len(found) or 'not run'} | " + " | ".join(cells)
                  + " |")
    out += rows
  note = (f"\nEpochs per trained run: {sorted(e for e in epochs if e) or '?'}; seeds "
          f"{args.seeds}; benchmark {args.benchmark} in {args.data_dir or 'the default data_dir'};"
          " intervals: the mean over seeds of each run's 95% bootstrap interval; the median "
          "rule caps cIoU at twice the box fraction (data_builders/stamps/README.md); AP / "
          "max-F1: the extended protocol over the split and its off-screen split, SLAVC's "
          "confidence; off-screen lit: share of off-screen pairs confident (>= 0.5) with the "
          "peak on an object; own > silence: the image's own sound more confident than "
          "silence (docs/evaluation.md); extra "
          f"flags: {args.extra or 'none'}.\n")
  return "\n".join(out) + "\n" + note


def collect(args) -> str:
  if args.benchmark != "demo":
    return collect_benchmark(args)
  header = ("| method | seeds | cIoU@0.5 mean (min..max) | cIoU 95% CI (mean of seeds) "
            "| AUC mean (min..max) | LVS-median cIoU | LVS-median AUC | pointing (95% CI) |")
  rows = [header, "|" + "---|" * 8]
  sizes, epochs = set(), set()
  for method in args.methods:
    found = []
    for seed in args.seeds:
      workdir = workdir_of(args.out, method, seed)
      path = test_metrics_path(workdir)
      if os.path.exists(path):
        with open(path) as f:
          found.append(json.load(f))
        with open(os.path.join(workdir, "config.json")) as f:  # what the run used
          epochs.add(json.load(f)["num_epochs"])
    if not found:
      rows.append(f"| {METHODS[method][2]} | 0 | not run | | | | | |")
      continue
    sizes.update(m["n"] for m in found)
    get = lambda key: [m[key] for m in found]  # noqa: E731
    ci = (f"[{statistics.fmean(get('ciou_ci95_lo')):.3f}, "
          f"{statistics.fmean(get('ciou_ci95_hi')):.3f}]")
    rows.append(f"| {METHODS[method][2]} | {len(found)} | {_fmt(get('ciou'))} | {ci} | "
                f"{_fmt(get('auc'))} | {_fmt(get('ciou_median'))} | {_fmt(get('auc_median'))} | "
                f"{_cell(found, 'pointing')} |")
  note = (f"\n{', '.join(map(str, sorted(epochs))) or '?'} epochs per run, seeds {args.seeds}, test split of the demo "
          f"(n={', '.join(map(str, sorted(sizes))) or '?'}); intervals: the mean over seeds of each "
          "run's 95% interval (pointing: bootstrap, or Wilson for runs that stored none); "
          f"extra flags: {args.extra or 'none'}.\n")
  return "\n".join(rows) + "\n" + note


def main(argv=None):
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  if args.rescore:
    rescore(args)
  elif not args.table_only:
    for seed in args.seeds:
      for method in args.methods:
        if METHODS[method][0] is not None or seed == args.seeds[0]:
          train_one(args, method, seed)
          workdir_path = workdir_of(args.out, method, seed)
          if args.benchmark != "demo" and not all(
              os.path.exists(extended_path(workdir_path, s)) for s in test_splits(args.benchmark)):
            score_extended(args, method, workdir_path)
  table = collect(args)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(table)
  print(table)


if __name__ == "__main__":
  main()
