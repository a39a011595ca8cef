"""The repository's GitHub URL, from its one place, everywhere it is written.

`Repository` under `[project.urls]` in pyproject.toml is the source. This
writes it into the Colab badge of README.md and of notebooks/quickstart.ipynb
(`https://colab.research.google.com/github/<owner>/<name>/blob/<branch>/notebooks/quickstart.ipynb`)
and into the notebook's `INSTALL_FROM` (`git+https://github.com/<owner>/<name>.git`).

  python scripts/set_repository_url.py            # rewrite the files
  python scripts/set_repository_url.py --check    # exit 1 (naming the file) if one disagrees

A fork: set `Repository` to its GitHub URL in pyproject.toml, then run the
first command. `tests/docs_test.py` runs the check.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join("notebooks", "quickstart.ipynb")
FILES = ("README.md", NOTEBOOK)
BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/blob/"
                   r"(?P<branch>[^/\s)]+)/notebooks/quickstart\.ipynb")
INSTALL = re.compile(r'INSTALL_FROM = \\?"git\+https://github\.com/[^"\\]+\.git\\?"')


def repository(root: str = REPO) -> tuple[str, str]:
  """`(owner, name)` of pyproject.toml's `[project.urls] Repository`."""
  with open(os.path.join(root, "pyproject.toml"), "rb") as f:
    url = tomllib.load(f)["project"]["urls"]["Repository"]
  m = re.fullmatch(r"https://github\.com/([^/\s]+)/([^/\s]+?)(?:\.git)?/?", url)
  if not m:
    raise SystemExit(f"error: pyproject.toml: [project.urls] Repository {url!r} is not "
                     "https://github.com/<owner>/<name>")
  return m.group(1), m.group(2)


def rewrite(text: str, owner: str, name: str) -> str:
  """`text` with every badge and install URL pointing at `owner/name`."""
  text = BADGE.sub(lambda m: f"https://colab.research.google.com/github/{owner}/{name}/blob/"
                             f"{m.group('branch')}/notebooks/quickstart.ipynb", text)
  quote = lambda m: '\\"' if m.group(0).startswith('INSTALL_FROM = \\"') else '"'  # noqa: E731
  return INSTALL.sub(lambda m: f"INSTALL_FROM = {quote(m)}git+https://github.com/{owner}/"
                               f"{name}.git{quote(m)}", text)


def out_of_date(root: str = REPO) -> list[str]:
  """The files whose URLs disagree with pyproject.toml (or that hold none)."""
  owner, name = repository(root)
  stale = []
  for path in FILES:
    with open(os.path.join(root, path)) as f:
      text = f.read()
    if not BADGE.search(text) or rewrite(text, owner, name) != text:
      stale.append(path)
  return stale


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--check", action="store_true", help="only check; exit 1 if a file disagrees")
  args = p.parse_args(argv)
  owner, name = repository()
  stale = out_of_date()
  if args.check:
    for path in stale:
      print(f"error: {path} does not point at github.com/{owner}/{name} "
            "(run python scripts/set_repository_url.py)", file=sys.stderr)
    return 1 if stale else 0
  for path in stale:
    full = os.path.join(REPO, path)
    with open(full) as f:
      text = f.read()
    with open(full, "w") as f:
      f.write(rewrite(text, owner, name))
    print(f"{path}: github.com/{owner}/{name}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
