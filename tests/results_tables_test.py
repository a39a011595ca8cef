"""scripts/results_tables.py: tables of seed batches merged into one equal the
table compare_methods.py prints from all the runs at once; the plot reads a
doc's section; bad input is named."""
import json
import os

import numpy as np
import pytest

from tests.helpers import import_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("pointing", "peak_silent", "silent", "ciou", "auc", "ciou_median", "r1")


@pytest.fixture(scope="module")
def scripts():
  return import_script("compare_methods"), import_script("results_tables")


def _fake_runs(compare, out, seeds_of):
  """Stamps-benchmark metrics for every (method, seed), drawn at random; the
  centre guess has no retrieval and no interval on cIoU."""
  rng = np.random.default_rng(0)
  for method, seeds in seeds_of.items():
    for seed in seeds:
      workdir = compare.workdir_of(out, method, seed)
      for split in ("test", "test_unseen"):
        os.makedirs(os.path.join(workdir, "eval", split))
        m = {"n": 500}
        for key in KEYS:
          if method == "centre" and key == "r1":
            continue
          m[key] = float(rng.uniform(0.1, 0.9))
          if key != "r1" and not (method == "centre" and key == "ciou"):
            m[f"{key}_ci95_lo"] = m[key] - float(rng.uniform(0.01, 0.05))
            m[f"{key}_ci95_hi"] = m[key] + float(rng.uniform(0.01, 0.05))
        with open(compare.test_metrics_path(workdir, split), "w") as f:
          json.dump(m, f)
      with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"num_epochs": 12}, f)


def _table(compare, out, seeds, methods):
  args = compare.parse_args([f"--out={out}", f"--seeds={seeds}", f"--methods={methods}",
                             "--benchmark=stamps", "--table_only"])
  return compare.collect(args)


def test_merged_batches_equal_the_table_of_all_seeds(scripts, tmp_path):
  """Seeds 0-1 of two rows and seed 2 of three rows (one missing earlier),
  merged: every cell equals the one compare_methods prints from all runs,
  up to the recorded rounding."""
  compare, tables = scripts
  _fake_runs(compare, str(tmp_path), {"lvs_vanilla": (0, 1, 2), "icl_full": (0, 1, 2),
                                      "ezvsl": (2,), "centre": (0,)})
  methods = "centre,lvs_vanilla,icl_full,ezvsl"
  first = _table(compare, str(tmp_path), "0,1", methods)
  second = _table(compare, str(tmp_path), "2", "lvs_vanilla,icl_full,ezvsl")
  merged = tables.read_tables(tables.merge([("a", first), ("b", second)]))
  exact = tables.read_tables(_table(compare, str(tmp_path), "0,1,2", methods))
  assert list(merged) == list(exact) == ["test", "test_unseen"]
  for split in exact:
    assert list(merged[split]["rows"]) == list(exact[split]["rows"])
    for method, [want] in exact[split]["rows"].items():
      [got] = merged[split]["rows"][method]
      assert got["seeds"] == want["seeds"], (split, method)
      for g, w in zip(got["cells"], want["cells"]):
        pg, pw = tables.parse_cell(g), tables.parse_cell(w)
        if pw is None:
          assert g == w
          continue
        for key in ("mean", "min", "max", "lo", "hi"):
          if pw[key] is None:
            assert pg[key] is None, (split, method, g, w)
          else:
            assert abs(pg[key] - pw[key]) <= 0.0015, (split, method, key, g, w)
  # a one-seed row counts as its own min and max; a text cell stays as it is
  row = exact["test"]["rows"]["EZ-VSL (max over patches, both directions)"][0]
  assert row["seeds"] == 1 and "(" not in row["cells"][0]
  assert exact["test"]["rows"]["centre guess (Gaussian, sigma = side / 4)"][0]["cells"][-1] == "n/a"


@pytest.mark.parametrize("text,cell", [
    ("0.418", {"mean": 0.418, "min": 0.418, "max": 0.418, "lo": None, "hi": None}),
    ("0.418 [0.375, 0.460]", {"mean": 0.418, "min": 0.418, "max": 0.418, "lo": 0.375,
                              "hi": 0.46}),
    ("0.418 (0.388..0.448) [0.375, 0.460]", {"mean": 0.418, "min": 0.388, "max": 0.448,
                                             "lo": 0.375, "hi": 0.46}),
    ("n/a", None), ("", None)])
def test_cells_parse(scripts, text, cell):
  assert scripts[1].parse_cell(text) == cell


def test_a_plot_of_a_docs_section(scripts, tmp_path):
  """The 128 px section of docs/results.md plots; a missing heading or column
  names what there is."""
  tables = scripts[1]
  path = str(tmp_path / "fig.png")
  tables.main(["plot", os.path.join(REPO, "docs", "results.md"),
               "--section=The same benchmark at 128 px", f"--out={path}"])
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(SystemExit, match="no heading contains 'nowhere'; headings: .*Results"):
    tables.main(["plot", os.path.join(REPO, "docs", "results.md"), "--section=nowhere",
                 f"--out={path}"])
  with pytest.raises(SystemExit, match=r"no column \['pointin'\]; it has \['pointing'"):
    tables.main(["plot", os.path.join(REPO, "docs", "results.md"),
                 "--section=The same benchmark at 128 px", "--columns=pointin", f"--out={path}"])


def test_two_tables_of_one_split_in_one_text_are_refused(scripts):
  """A whole doc with 96 and 128 px tables would mix them: refused, naming the line."""
  with pytest.raises(ValueError, match=r"results.md:\d+: a second 'test' table"):
    with open(os.path.join(REPO, "docs", "results.md")) as f:
      scripts[1].read_tables(f.read(), "results.md")
