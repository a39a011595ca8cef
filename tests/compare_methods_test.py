"""scripts/compare_methods.py's tables: the pointing interval of runs that
stored none, and the table built from run folders."""
import json
import os

import numpy as np
import pytest

from tests.helpers import import_script


@pytest.fixture(scope="module")
def compare():
  return import_script("compare_methods")


@pytest.mark.parametrize("p", [0.25, 0.5, 0.97])
def test_wilson_pointing_interval_matches_a_bootstrap_of_the_hits(compare, p):
  """Without a stored interval, a run's pointing interval is the Wilson
  interval of a proportion; a percentile bootstrap of the 0/1 hits (what the
  evaluator stores) agrees with it to 0.01 at n = 500."""
  n = 500
  hits = np.zeros(n)
  hits[:round(p * n)] = 1
  rng = np.random.default_rng(0)
  means = hits[rng.integers(0, n, size=(4000, n))].mean(axis=1)
  lo, hi = compare._run_ci({"pointing": hits.mean(), "n": n}, "pointing")
  assert lo < hits.mean() < hi
  assert abs(lo - np.percentile(means, 2.5)) < 0.01
  assert abs(hi - np.percentile(means, 97.5)) < 0.01


def test_a_stored_pointing_interval_is_used_as_it_is(compare):
  assert compare._run_ci({"pointing": 0.5, "n": 500, "pointing_ci95_lo": 0.1,
                          "pointing_ci95_hi": 0.2}, "pointing") == (0.1, 0.2)


def test_a_missing_interval_of_another_metric_is_left_out(compare):
  """Only pointing has a fallback interval; another metric without a stored one
  prints its value alone."""
  assert compare._run_ci({"ciou": 0.3, "n": 500}, "ciou") is None
  assert compare._cell([{"ciou": 0.3, "n": 500}], "ciou") == "0.300"


def test_the_demo_table_reads_each_seeds_report(compare, tmp_path):
  """Two seeds of one row: mean (min..max) of the metrics and the mean of the
  seeds' intervals; a row without runs says so."""
  for seed, (ciou, pointing) in enumerate([(0.2, 0.9), (0.4, 0.7)]):
    workdir = compare.workdir_of(str(tmp_path), "lvs_vanilla", seed)
    os.makedirs(os.path.join(workdir, "eval", "test"))
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump({"num_epochs": 6}, f)
    with open(compare.test_metrics_path(workdir), "w") as f:
      json.dump({"ciou": ciou, "auc": 0.3, "ciou_ci95_lo": ciou - 0.05,
                 "ciou_ci95_hi": ciou + 0.05, "ciou_median": 0.1, "auc_median": 0.2,
                 "pointing": pointing, "pointing_ci95_lo": pointing - 0.1,
                 "pointing_ci95_hi": pointing + 0.1, "n": 500}, f)
  args = compare.parse_args([f"--out={tmp_path}", "--seeds=0,1",
                             "--methods=lvs_vanilla,hp_image", "--table_only"])
  table = compare.collect(args)
  row = next(line for line in table.splitlines() if line.startswith("| Vanilla-LVS"))
  assert "| 2 | 0.300 (0.200..0.400) | [0.250, 0.350] |" in row
  assert row.endswith("| 0.800 (0.700..0.900) [0.700, 0.900] |")
  assert "| HardPos, image-anchored negatives | 0 | not run |" in table
  assert "6 epochs per run, seeds [0, 1]" in table


def test_the_centre_guess_reads_the_data_the_extra_flags_name(compare):
  """`--extra` reaches the centre guess's config too (it once scored the
  default stamps build while the runs read `stamps/px128`)."""
  from soundloc_jax.configs import iterative
  config = compare.apply_extra(iterative.get_config("stamps"),
                               ["--config.dataset.name=stamps/px128",
                                "--config.dataset.image_size=128",
                                "--config.method.teacher_guard=False"])
  assert config.dataset.name == "stamps/px128"
  assert config.dataset.image_size == 128 and config.method.teacher_guard is False
  with pytest.raises(SystemExit, match="--config.<key>=<value>"):
    compare.apply_extra(config, ["--seed=1"])


@pytest.mark.parametrize("benchmark", ["stamps", "stamps128"])
def test_every_row_gets_the_benchmarks_preset_and_keeps_its_options(compare, benchmark):
  """Each method file's config, loaded through `config_arg`, is its preset of
  the benchmark with the row's own options (HardPos's random neighbours, the
  Vanilla-LVS variant, ICL's ablation)."""
  import importlib
  from soundloc_jax.configs import datasets
  for name in ("lvs_vanilla", "random_hp", "icl_initial", "ezvsl"):
    arg = compare.config_arg(compare.METHODS[name][0], benchmark)
    path, _, option = arg.partition(":")
    assert option.split(",")[0] == benchmark, arg
    module = importlib.import_module("soundloc_jax.configs." + os.path.basename(path)[:-3])
    config = module.get_config(option)
    assert config.dataset.name == datasets.PRESETS[benchmark]["dataset"]
    assert config.dataset.image_size == datasets.PRESETS[benchmark]["image_size"]
    assert tuple(config.dataset.test_splits) == compare.test_splits(benchmark)  # what is scored
  assert compare.config_arg("configs/lvs.py:,variant=vanilla", benchmark) == \
      f"configs/lvs.py:{benchmark},variant=vanilla"
  assert compare.test_splits(benchmark) == ("test", "test_unseen")
  assert compare.test_splits("demo") == ("test",)


def test_the_stamps_table_gains_the_extended_protocol_columns(compare, tmp_path):
  """A row's `eval/<split>/extended.json` (written by `score_extended`, also
  under --rescore) adds AP, max-F1, the off-screen lit rate and the silence
  probe to the stamps table; a row without it shows n/a there."""
  for method, extended in (("lvs", {"ap": 0.42, "max_f1": 0.5, "lit_offscreen": 0.3,
                                     "own_above_silence": 0.9, "ap_ci95_lo": 0.38,
                                     "ap_ci95_hi": 0.46}), ("centre", None)):
    workdir = compare.workdir_of(str(tmp_path), method, 0)
    for split in ("test", "test_unseen"):
      os.makedirs(os.path.join(workdir, "eval", split))
      with open(compare.test_metrics_path(workdir, split), "w") as f:
        json.dump({"ciou": 0.2, "auc": 0.3, "n": 500}, f)
      if extended:
        with open(compare.extended_path(workdir, split), "w") as f:
          json.dump(extended, f)
  args = compare.parse_args([f"--out={tmp_path}", "--seeds=0", "--methods=lvs,centre",
                             "--benchmark=stamps", "--table_only"])
  table = compare.collect(args)
  header = next(line for line in table.splitlines() if line.startswith("| method"))
  assert header.endswith("| AP (+ off-screen) | max-F1 | off-screen lit | own > silence |")
  row = next(line for line in table.splitlines() if line.startswith("| LVS (tri-map"))
  assert row.endswith("| 0.420 [0.380, 0.460] | 0.500 | 0.300 | 0.900 |")  # AP's interval
  centre = next(line for line in table.splitlines() if line.startswith("| centre guess"))
  assert centre.endswith("| n/a | n/a | n/a | n/a |")
