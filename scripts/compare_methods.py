"""Every method on the demo data, same budget, several seeds -> one results table.

  python scripts/compare_methods.py --out=/tmp/compare              # all rows, seeds 0,1,2
  python scripts/compare_methods.py --out=DIR --methods=lvs_vanilla,hardpos --seeds=0
  python scripts/compare_methods.py --out=DIR --table_only          # re-print from finished runs
  python scripts/compare_methods.py --out=DIR --rescore             # score them again, re-print

Each (method, seed) trains with `python -m soundloc_jax.main` in
`OUT/<method>/seed<S>` for `--epochs` epochs with `--config.seed=S` and
nothing else changed, so every row has the same data, batch size, optimizer
and number of steps. HardPos rows mine their neighbours (`python -m
soundloc_jax.mine`) from the Vanilla-LVS run of the same seed, which is
itself a row of the table (mining is not counted in the budget; the paper
does the same). LVS-style rows use `negative_pooling=masked` (see
`MASKED`). Rows ending in `_init` start from the Vanilla-LVS row's run of
the same seed (`model.init_from`) and train `--epochs` more. A finished run (its `eval/test/metrics.json` exists) is not
run again, and an interrupted one resumes, so rerunning the same command
finishes the table. The table reports, per method, the mean and the spread
(min..max over seeds) of the test cIoU@0.5 and AUC of the demo's headline
protocol (fixed threshold, `configs/default.py`), the mean of the per-seed
95% bootstrap intervals of cIoU, the median-protocol (LVS) numbers and the
pointing-game hit rate (`evaluation.protocol.pointing_hits`: the map's peak on the
sounding digit's box). `--rescore` scores finished runs again with the
current evaluator.
It is written to `OUT/results.md` and printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
# `b` control (P_b alone with HardPos's negative set) and Random HP, each with
# the three anchors of `method.negative_anchor`.
for _anchor in ("audio", "image", "both"):
  _flags = MASKED + (f"--config.method.negative_anchor={_anchor}",)
  METHODS[f"hp_{_anchor}"] = ("configs/hard_positive.py", "lvs_vanilla",
                              f"HardPos, {_anchor}-anchored negatives", _flags)
  METHODS[f"hpb_{_anchor}"] = ("configs/hard_positive.py", "lvs_vanilla",
                               f"P_b only (control), {_anchor}-anchored negatives",
                               _flags + ("--config.method.positives=b",))
  METHODS[f"rhp_{_anchor}"] = ("configs/hard_positive.py:,neighbours=random", None,
                               f"Random HP, {_anchor}-anchored negatives", _flags)
# `<row>_init`: the same row started from the Vanilla-LVS run of the same seed
# (`model.init_from`, both streams; fresh optimizer and step) and trained for
# as many epochs again; `lvs_vanilla_init` is that baseline trained on.
INIT_FROM = "lvs_vanilla"
for _name in ["lvs_vanilla"] + [f"{p}_{a}" for p in ("hp", "hpb", "rhp")
                                for a in ("audio", "image", "both")]:
  _config, _baseline, _description, _flags = METHODS[_name]
  METHODS[f"{_name}_init"] = (_config, _baseline, _description + ", from Vanilla-LVS", _flags)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="directory for all runs and results.md")
  p.add_argument("--methods", default=",".join(METHODS),
                 help=f"comma-separated subset of: {', '.join(METHODS)}")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--epochs", type=int, default=12, help="epochs per run (the same for all)")
  p.add_argument("--extra", action="append", default=[],
                 help="extra --config.x=y flag for every run (repeatable)")
  p.add_argument("--table_only", action="store_true", help="only collect finished runs")
  p.add_argument("--rescore", action="store_true",
                 help="score every finished run's final checkpoint on the test split again "
                      "(after the evaluator gained a metric), then print the table")
  args = p.parse_args(argv)
  args.methods = [m for m in args.methods.split(",") if m]
  unknown = sorted(set(args.methods) - set(METHODS))
  if unknown:
    p.error(f"unknown method(s) {unknown}; available: {', '.join(METHODS)}")
  args.seeds = [int(s) for s in args.seeds.split(",") if s]
  return args


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


def test_metrics_path(workdir: str) -> str:
  return os.path.join(workdir, "eval", "test", "metrics.json")


def train_one(args, method: str, seed: int) -> None:
  workdir = workdir_of(args.out, method, seed)
  if os.path.exists(test_metrics_path(workdir)):
    return
  config, baseline, _, own_flags = METHODS[method]
  flags = [f"--config={config}", f"--workdir={workdir}", f"--config.seed={seed}",
           f"--config.num_epochs={args.epochs}", *own_flags, *args.extra]
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
  os.makedirs(workdir, exist_ok=True)
  _run([sys.executable, "-m", "soundloc_jax.main", *flags], os.path.join(workdir, "train.log"))


def rescore(args) -> None:
  """`--mode=eval` of each finished run, in this process, with its own config."""
  from soundloc_jax import evaluate, workdir
  for method in args.methods:
    for seed in args.seeds:
      workdir_path = workdir_of(args.out, method, seed)
      if os.path.exists(test_metrics_path(workdir_path)):
        evaluate.evaluate_checkpoint(workdir.read_config(workdir_path), workdir_path)


def _fmt(values: list[float]) -> str:
  mean = statistics.fmean(values)
  if len(values) == 1:
    return f"{mean:.3f}"
  return f"{mean:.3f} ({min(values):.3f}..{max(values):.3f})"


def collect(args) -> str:
  header = ("| method | seeds | cIoU@0.5 mean (min..max) | cIoU 95% CI (mean of seeds) "
            "| AUC mean (min..max) | LVS-median cIoU | LVS-median AUC | pointing |")
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
                f"{_fmt(get('pointing')) if all('pointing' in m for m in found) else 'n/a'} |")
  note = (f"\n{', '.join(map(str, sorted(epochs))) or '?'} epochs per run, seeds {args.seeds}, test split of the demo "
          f"(n={', '.join(map(str, sorted(sizes))) or '?'}); extra flags: {args.extra or 'none'}.\n")
  return "\n".join(rows) + "\n" + note


def main(argv=None):
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  if args.rescore:
    rescore(args)
  elif not args.table_only:
    for seed in args.seeds:
      for method in args.methods:
        train_one(args, method, seed)
  table = collect(args)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(table)
  print(table)


if __name__ == "__main__":
  main()
