"""scripts/plot_curves.py: the series it reads from metrics.jsonl and its errors."""

import json
import os

from helpers import import_script

plot_curves = import_script("plot_curves")


def _workdir(tmp_path, name, rows):
  d = tmp_path / name
  d.mkdir()
  with open(d / "metrics.jsonl", "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  return str(d)


def test_series_keeps_the_split_and_the_last_value_per_step(tmp_path):
  rows = [{"step": 20, "split": "train", "loss": 4.0}, {"step": 40, "split": "train", "loss": 3.0},
          {"step": 93, "split": "validation", "r1": 0.1, "median_rank": 30},
          {"step": 93, "split": "test", "r1": 0.9},          # another split: not a point
          {"step": 40, "split": "train", "loss": 2.5}]       # a resumed run logs step 40 again
  assert plot_curves.series(rows, "train", "loss") == ([20, 40], [4.0, 2.5])
  assert plot_curves.series(rows, "validation", "r1") == ([93], [0.1])
  a = _workdir(tmp_path, "a", rows)
  out = str(tmp_path / "fig.png")
  assert plot_curves.main([f"run a={a}", "--out", out]) == 0
  assert os.path.getsize(out) > 0


def test_bad_arguments_are_one_line(tmp_path, capsys):
  assert plot_curves.main(["no-equals-sign", "--out", str(tmp_path / "x.png")]) == 2
  assert plot_curves.main([f"x={tmp_path}", "--out", str(tmp_path / "x.png")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and "metrics.jsonl" in err[1]
