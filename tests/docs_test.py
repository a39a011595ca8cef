"""The documentation holds together: every relative link of README.md and
docs/ resolves (the file, and the #anchor to a heading of it), every
`python -m X` in their command blocks is a module whose `--help` exits 0,
every `python scripts/...` / `benchmarks/...` script they name exists, the
README stays short, every image they show exists, and the Colab badge agrees
with pyproject.toml."""

import glob
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import import_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted([os.path.join(REPO, "README.md")]
              + glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def _rel(path):
  return os.path.relpath(path, REPO)


def _text(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def slug(heading: str) -> str:
  """GitHub's anchor of a markdown heading: lower case, punctuation other than
  `-` and `_` dropped, spaces as `-`."""
  text = re.sub(r"`|\*\*|\*", "", heading.strip().lower())
  return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path) -> set:
  """The anchors of a markdown file's headings (repeats get -1, -2, ... as on GitHub)."""
  seen, out = {}, set()
  prose = FENCE.sub("", _text(path))
  for m in re.finditer(r"^#{1,6} +(.+?) *#*$", prose, re.M):
    base = slug(m.group(1))
    n = seen.get(base, 0)
    out.add(base if n == 0 else f"{base}-{n}")
    seen[base] = n + 1
  return out


def links(path):
  """Relative link targets of a markdown file, outside code blocks."""
  prose = FENCE.sub("", _text(path))
  prose = re.sub(r"`[^`\n]*`", "", prose)  # inline code is not a link
  return [t for t in LINK.findall(prose) if not re.match(r"[a-z]+:", t)]


def test_slugs_follow_github():
  assert slug("What the demo reaches") == "what-the-demo-reaches"
  assert slug("HardPos negatives' anchor") == "hardpos-negatives-anchor"
  assert slug("Every method on the demo (3 seeds)") == "every-method-on-the-demo-3-seeds"
  assert slug("The demo dataset: av_digits") == "the-demo-dataset-av_digits"
  assert slug("LVS and Vanilla-LVS") == "lvs-and-vanilla-lvs"


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_relative_link_resolves(doc):
  found = links(doc)
  assert found or doc.endswith(("layout.md", "distributed.md")), f"{_rel(doc)} links nowhere"
  for target in found:
    path, _, anchor = target.partition("#")
    dest = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
    assert os.path.exists(dest), f"{_rel(doc)}: link {target!r}: {_rel(dest)} does not exist"
    if anchor:
      assert dest.endswith(".md"), f"{_rel(doc)}: link {target!r} has an anchor into a non-markdown file"
      assert anchor in anchors(dest), (
          f"{_rel(doc)}: link {target!r}: no heading #{anchor} in {_rel(dest)} "
          f"(it has {sorted(anchors(dest))})")


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_image_exists(doc):
  for target in IMAGE.findall(FENCE.sub("", _text(doc))):
    if re.match(r"[a-z]+:", target):
      continue  # a URL (the Colab badge)
    dest = os.path.normpath(os.path.join(os.path.dirname(doc), target))
    assert os.path.exists(dest), f"{_rel(doc)}: image {target!r}: {_rel(dest)} does not exist"


def _command_blocks(doc):
  return FENCE.findall(_text(doc))


def _modules():
  found = set()
  for doc in DOCS:
    for block in _command_blocks(doc):
      found |= set(re.findall(r"python -m ([A-Za-z_][\w.]*)", block))
  return sorted(found)


def test_the_readme_is_short_and_its_command_blocks_name_modules():
  readme = _text(os.path.join(REPO, "README.md"))
  assert len(readme.splitlines()) <= 200
  modules = set(re.findall(r"python -m ([A-Za-z_][\w.]*)",
                           "\n".join(_command_blocks(os.path.join(REPO, "README.md")))))
  assert {"soundloc_jax.main", "soundloc_jax.localize", "soundloc_jax.tfds_build",
          "pytest"} <= modules
  assert "tensorboard --logdir" in readme


@pytest.mark.parametrize("module", _modules())
def test_every_python_m_module_answers_help(module):
  proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, f"python -m {module} --help: {proc.stderr[-2000:]}"
  assert proc.stdout.strip(), f"python -m {module} --help printed nothing"


def test_every_named_script_exists():
  for doc in DOCS:
    text = _text(doc)
    for script in set(re.findall(r"python ((?:scripts|benchmarks|tests/fixtures)/[\w./-]+\.py)",
                                 text)):
      assert os.path.exists(os.path.join(REPO, script)), f"{_rel(doc)} names {script}"


def test_the_colab_badge_and_install_url_come_from_pyproject():
  proc = subprocess.run([sys.executable, os.path.join("scripts", "set_repository_url.py"),
                         "--check"], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr


def test_the_url_script_rewrites_every_copy(tmp_path):
  urls = import_script("set_repository_url")
  for name in ("README.md", "pyproject.toml", os.path.join("notebooks", "quickstart.ipynb")):
    os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
    (tmp_path / name).write_text(_text(os.path.join(REPO, name)))
  owner, name = urls.repository(REPO)
  pyproject = tmp_path / "pyproject.toml"
  pyproject.write_text(pyproject.read_text().replace(
      f"https://github.com/{owner}/{name}", "https://github.com/a-fork/sl2"))
  assert urls.out_of_date(str(tmp_path)) == ["README.md", os.path.join("notebooks", "quickstart.ipynb")]
  for path in urls.FILES:
    text = (tmp_path / path).read_text()
    (tmp_path / path).write_text(urls.rewrite(text, "a-fork", "sl2"))
  assert urls.out_of_date(str(tmp_path)) == []
  assert "colab.research.google.com/github/a-fork/sl2/blob/main/notebooks/quickstart.ipynb" in (
      tmp_path / "README.md").read_text()
  assert "git+https://github.com/a-fork/sl2.git" in (
      tmp_path / "notebooks" / "quickstart.ipynb").read_text()


def test_no_docstring_cites_a_file_or_section_that_moved():
  """EVAL_PROTOCOL.md is not in the repository; the README's long sections
  moved to docs/."""
  stale = re.compile(r"EVAL_PROTOCOL\.md|see the README|README's \"|\(README, \"|"
                     r"\(README, HardPos|and the README\)")
  for path in glob.glob(os.path.join(REPO, "**", "*.py"), recursive=True):
    if "/tests/" in path or "/build/" in path:
      continue
    for n, line in enumerate(_text(path).splitlines(), 1):
      assert not stale.search(line), f"{_rel(path)}:{n}: {line.strip()}"
