"""Recorded results tables (the markdown `compare_methods.py` prints): merge
batches of seeds, and plot a table.

  python scripts/results_tables.py merge OLD.md NEW.md > MERGED.md
  python scripts/results_tables.py plot docs/results.md \\
      --section="The same benchmark at 128 px" --out=docs/figures/stamps128.png

A table is a `**split**` line followed by markdown rows `| method | seeds |
cell | ... |`. A cell is `mean`, `mean [lo, hi]`, `mean (min..max)` or
`mean (min..max) [lo, hi]` (mean over seeds, their spread, the mean of the
seeds' 95% intervals), or text (`n/a`).

`merge` is for a sweep whose run folders are not all on one disk any more,
e.g. spread over machines: each input holds the rows of some seeds, and the
output has one row per (split, method) over all of them. Each merged mean
and interval is the seed-weighted mean of the recorded ones (exact up to the
recorded 3-decimal rounding); min..max spans every input (a one-seed row
counts as its own min and max). Rows and columns keep the first input's
order; a method missing from some inputs merges what there is. When the run
folders still exist, `compare_methods.py --table_only` on them is exact and
preferred.

`plot` draws each split's table: one panel per column (`--columns`), one line
per method, a dot at the mean, a thick bar for the interval, a thin one for
min..max over seeds. `--section` takes the tables under the first markdown
heading that contains that text, up to the next heading. A text must hold
one table per split.
"""

from __future__ import annotations

import argparse
import re
import sys

_NUM = r"(\d+(?:\.\d+)?)"
_CELL = re.compile(rf"^{_NUM}(?: \({_NUM}\.\.{_NUM}\))?(?: \[{_NUM}, {_NUM}\])?$")
_SPLIT = re.compile(r"^\*\*(\S+)\*\*\s*$")
_HEADING = re.compile(r"^(#+)\s+(.*)$")
DEFAULT_COLUMNS = ("pointing", "silent-object test", "cIoU@0.5 fixed")
# Rows drawn as dashed lines across their panel too: the bars a method must clear.
DEFAULT_REFERENCES = ("untrained", "centre guess")


def parse_cell(text: str) -> dict | None:
  """{'mean', 'min', 'max', 'lo', 'hi'} of a numeric cell (lo / hi None when
  it has no interval; min = max = mean when it has no spread), else None."""
  match = _CELL.match(text.strip())
  if not match:
    return None
  mean, low, high, lo, hi = (None if v is None else float(v) for v in match.groups())
  return {"mean": mean, "min": mean if low is None else low,
          "max": mean if high is None else high, "lo": lo, "hi": hi}


def format_cell(cell: dict, seeds: int) -> str:
  text = f"{cell['mean']:.3f}"
  if seeds > 1:
    text += f" ({cell['min']:.3f}..{cell['max']:.3f})"
  if cell["lo"] is not None:
    text += f" [{cell['lo']:.3f}, {cell['hi']:.3f}]"
  return text


def _cells(line: str) -> list[str]:
  return [c.strip() for c in line.strip().strip("|").split("|")]


def read_tables(text: str, source: str = "<text>") -> dict:
  """{split: {"columns": [...], "rows": {method: {"seeds": n, "cells": [...]}}}},
  in the order of the text. Rows whose seeds column is not a number ("not
  run") are skipped. Raises ValueError naming `source` if there is no table."""
  tables, split, columns = {}, None, None
  for number, line in enumerate(text.splitlines(), 1):
    found = _SPLIT.match(line.strip())
    if found:
      split, columns = found.group(1), None
      if split in tables:
        raise ValueError(f"{source}:{number}: a second {split!r} table; give one table per "
                         "split (plot: choose one with --section)")
      continue
    if split is None or not line.lstrip().startswith("|"):
      continue
    cells = _cells(line)
    if columns is None:
      if cells[:2] != ["method", "seeds"]:
        raise ValueError(f"{source}:{number}: a table's header must start with "
                         f"'| method | seeds |', got {line.strip()!r}")
      columns = cells[2:]
      tables.setdefault(split, {"columns": columns, "rows": {}})
      continue
    if set("".join(cells)) <= set("-: "):
      continue  # the header's rule
    if not cells[1].isdigit():
      continue
    if len(cells) != len(columns) + 2:
      raise ValueError(f"{source}:{number}: {len(cells) - 2} cells for {len(columns)} "
                       f"columns {columns}")
    tables[split]["rows"].setdefault(cells[0], []).append(
        {"seeds": int(cells[1]), "cells": cells[2:]})
  if not tables:
    raise ValueError(f"{source}: no results table (a '**split**' line followed by "
                     "'| method | seeds | ...' rows)")
  return tables


def merge_rows(rows: list[dict]) -> dict:
  """One row over all seeds of `rows` (each {"seeds": n, "cells": [...]})."""
  seeds = sum(r["seeds"] for r in rows)
  merged = []
  for j, first in enumerate(rows[0]["cells"]):
    parsed = [parse_cell(r["cells"][j]) for r in rows]
    if any(p is None for p in parsed):
      merged.append(first)  # text, e.g. n/a
      continue
    weight = lambda key: sum(r["seeds"] * p[key] for r, p in zip(rows, parsed)) / seeds  # noqa: E731
    has_ci = all(p["lo"] is not None for p in parsed)
    merged.append(format_cell({
        "mean": weight("mean"), "min": min(p["min"] for p in parsed),
        "max": max(p["max"] for p in parsed),
        "lo": weight("lo") if has_ci else None, "hi": weight("hi") if has_ci else None},
        seeds))
  return {"seeds": seeds, "cells": merged}


def merge(texts: list[tuple[str, str]]) -> str:
  """The merged tables of several (source, text) pairs, as markdown."""
  merged = {}
  for source, text in texts:
    for split, table in read_tables(text, source).items():
      into = merged.setdefault(split, {"columns": table["columns"], "rows": {}})
      if table["columns"] != into["columns"]:
        raise ValueError(f"{source}: split {split!r} has columns {table['columns']}, "
                         f"the first input has {into['columns']}")
      for method, rows in table["rows"].items():
        into["rows"].setdefault(method, []).extend(rows)
  out = []
  for split, table in merged.items():
    out += [f"\n**{split}**\n", "| method | seeds | " + " | ".join(table["columns"]) + " |",
            "|" + "---|" * (len(table["columns"]) + 2)]
    for method, rows in table["rows"].items():
      row = merge_rows(rows)
      out.append(f"| {method} | {row['seeds']} | " + " | ".join(row["cells"]) + " |")
  return "\n".join(out) + "\n"


def section(text: str, heading: str, source: str = "<text>") -> str:
  """The lines under the first heading containing `heading`, up to the next
  heading (of any level: a subsection's tables are not its parent's)."""
  lines = text.splitlines()
  for start, line in enumerate(lines):
    found = _HEADING.match(line)
    if found and heading in found.group(2):
      end = next((k for k in range(start + 1, len(lines)) if _HEADING.match(lines[k])),
                 len(lines))
      return "\n".join(lines[start + 1:end])
  titles = [m.group(2) for m in map(_HEADING.match, lines) if m]
  raise ValueError(f"{source}: no heading contains {heading!r}; headings: {titles}")


def _label(method: str) -> str:
  short = method.split(" (")[0] if len(method) > 28 else method
  return short if len(short) <= 40 else short[:38] + "…"


def plot(tables: dict, columns: list[str], path: str, title: str = "",
         references: tuple[str, ...] = DEFAULT_REFERENCES) -> str:
  """Writes a PNG of `columns` of every split in `tables` (see module doc);
  the rows whose name starts with one of `references` are also drawn as a
  dashed line at their mean."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  splits = list(tables)
  for split in splits:
    missing = [c for c in columns if c not in tables[split]["columns"]]
    if missing:
      raise ValueError(f"split {split!r} has no column {missing}; it has "
                       f"{tables[split]['columns']}")
  methods = list(dict.fromkeys(m for s in splits for m in tables[s]["rows"]))
  fig = Figure(figsize=(3.2 * len(columns) + 2.6, 0.32 * len(methods) * len(splits) + 1.4),
               dpi=110)
  axes = fig.subplots(len(splits), len(columns), squeeze=False, sharey=True)
  for i, split in enumerate(splits):
    rows = {m: merge_rows(r) for m, r in tables[split]["rows"].items()}
    for k, column in enumerate(columns):
      ax = axes[i][k]
      j = tables[split]["columns"].index(column)
      for prefix, color in zip(references, ("tab:red", "tab:orange", "tab:green")):
        method = next((m for m in rows if m.startswith(prefix)), None)
        cell = method and parse_cell(rows[method]["cells"][j])
        if cell:
          ax.axvline(cell["mean"], color=color, ls="--", lw=0.8,
                     label=_label(method) if i == k == 0 else None)
      for y, method in enumerate(methods):
        cell = parse_cell(rows[method]["cells"][j]) if method in rows else None
        if cell is None:
          continue
        ax.plot([cell["min"], cell["max"]], [y, y], color="0.55", lw=1)
        if cell["lo"] is not None:
          ax.plot([cell["lo"], cell["hi"]], [y, y], color="tab:blue", lw=4, alpha=0.5,
                  solid_capstyle="butt")
        ax.plot([cell["mean"]], [y], "o", color="tab:blue", ms=4)
        if k == len(columns) - 1:
          ax.text(1.0, y, f" {rows[method]['seeds']}", fontsize=6, va="center",
                  transform=ax.get_yaxis_transform())
      ax.set_xlim(0, 1)
      ax.grid(axis="x", alpha=0.3)
      ax.set_title(f"{split}: {column}", fontsize=8)
      ax.tick_params(labelsize=7)
  axes[0][0].set_yticks(range(len(methods)))
  axes[0][0].set_yticklabels([_label(m) for m in methods])
  if axes[0][0].get_legend_handles_labels()[0]:
    axes[0][0].legend(fontsize=6, loc="lower right")
  axes[0][0].invert_yaxis()
  if title:
    fig.suptitle(title, fontsize=9)
  fig.text(0.01, 0.005, "dot: mean over seeds; thick bar: mean 95% interval; thin bar: "
           "min..max over seeds; right: seeds", fontsize=6)
  fig.tight_layout(rect=(0, 0.02, 1, 1))
  fig.savefig(path)
  return path


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  m = sub.add_parser("merge", help="one row per method over the seeds of every input")
  m.add_argument("tables", nargs="+", help="markdown files with compare_methods tables")
  g = sub.add_parser("plot", help="a PNG of a table")
  g.add_argument("table", help="a markdown file with compare_methods tables")
  g.add_argument("--section", default="", help="take the tables under this heading")
  g.add_argument("--columns", default=",".join(DEFAULT_COLUMNS))
  g.add_argument("--title", default=None, help="the figure's title (default: --section)")
  g.add_argument("--references", default=",".join(DEFAULT_REFERENCES),
                 help="rows (name prefixes) also drawn as dashed lines; empty for none")
  g.add_argument("--out", required=True, help="the PNG to write")
  args = p.parse_args(argv)
  try:
    if args.command == "merge":
      texts = []
      for path in args.tables:
        with open(path) as f:
          texts.append((path, f.read()))
      print(merge(texts), end="")
    else:
      with open(args.table) as f:
        text = f.read()
      if args.section:
        text = section(text, args.section, args.table)
      tables = read_tables(text, args.table)
      print(plot(tables, args.columns.split(","), args.out, title=args.section if args.title is None else args.title,
                 references=tuple(r for r in args.references.split(",") if r)))
  except (OSError, ValueError) as e:
    sys.exit(f"results_tables.py: {e}")


if __name__ == "__main__":
  main()
