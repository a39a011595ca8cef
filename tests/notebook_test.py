"""The quick-start notebook: committed without outputs, and it runs top to bottom.

The run installs the project the way the notebook does on Colab (`pip install`
of the repo), but from a copy of this checkout, without network
(`--no-deps --no-build-isolation`), into a throwaway virtualenv whose
dependencies come from the test environment (a `.pth` line), and executes
every cell in a kernel of that virtualenv with `FAST = True`. So the
notebook, the package's install (packaged configs and builders) and the
public API it shows are tested together.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")
SAMPLE_DIR = os.path.join(REPO, "notebooks", "sample")
KERNEL = "soundloc-notebook-test"


def test_committed_notebook_has_no_outputs_and_a_parameters_cell():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.outputs == [] and c.execution_count is None for c in code)
  assert "widgets" not in nb.metadata
  params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1 and code.index(params[0]) == 0
  for name in ("FAST", "NUM_EPOCHS", "INSTALL_FROM", "PIP_ARGS", "USE_UPLOAD", "SHOW_TENSORBOARD",
               "WORKDIR", "DATA_DIR", "SAMPLE_DIR"):
    assert f"\n{name} = " in "\n" + params[0].source
  # The shipped sample pair is small.
  sizes = {n: os.path.getsize(os.path.join(SAMPLE_DIR, n)) for n in os.listdir(SAMPLE_DIR)}
  assert set(sizes) == {"scene.png", "sound.wav"} and max(sizes.values()) < 32_000


def _make_venv(path):
  """A virtualenv without pip or packages of its own; the test environment's
  site-packages (dependencies, pip, setuptools, ipykernel) are on its path
  through a .pth line, which does not run that environment's editable-install
  hook, so `soundloc_jax` is importable there only once pip installs it."""
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True, timeout=120)
  python = os.path.join(path, "bin", "python")
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        check=True, capture_output=True, text=True).stdout.strip()
  deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
  with open(os.path.join(site, "test_environment.pth"), "w") as f:
    f.write("\n".join(sorted(deps)) + "\n")
  return python


def _copy_checkout(dest):
  shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(
      ".git", "build", "*.egg-info", "__pycache__", "workdirs", ".pytest_cache", "tests",
      "notebooks", "benchmarks"))


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_from_a_fresh_install(demo_data_dir, tmp_path, monkeypatch):
  """~1.5 min on 2 cores (a tiny model, 3 epochs of 8 steps)."""
  from nbclient import NotebookClient

  python = _make_venv(str(tmp_path / "venv"))
  checkout = str(tmp_path / "checkout")
  _copy_checkout(checkout)
  kernel_dir = tmp_path / "jupyter" / "kernels" / KERNEL
  kernel_dir.mkdir(parents=True)
  (kernel_dir / "kernel.json").write_text(json.dumps({
      "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "soundloc notebook test", "language": "python",
      "env": {"PYTHONPATH": "", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))

  nb = nbformat.read(NOTEBOOK, as_version=4)
  index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  params = {"FAST": True, "NUM_EPOCHS": 3, "INSTALL_FROM": checkout,
            "PIP_ARGS": "--no-deps --no-build-isolation", "USE_UPLOAD": False,
            # No TensorBoard server from CI (the notebook loads the extension elsewhere).
            "SHOW_TENSORBOARD": False,
            "WORKDIR": "run", "DATA_DIR": demo_data_dir, "SAMPLE_DIR": SAMPLE_DIR}
  nb.cells.insert(index + 1, nbformat.v4.new_code_cell(
      "\n".join(f"{k} = {v!r}" for k, v in params.items()),
      metadata={"tags": ["injected-parameters"]}))
  nb.cells.append(nbformat.v4.new_code_cell(
      "import soundloc_jax\nfrom soundloc_jax import configs\nprint(soundloc_jax.__file__)\n"
      "print(configs.__file__)"))
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  NotebookClient(nb, kernel_name=KERNEL, timeout=600,
                 resources={"metadata": {"path": str(cwd)}}).execute()

  # The kernel used the freshly installed package, not this checkout.
  where = "".join(o.get("text", "") for o in nb.cells[-1].outputs).split()
  site = os.path.realpath(str(tmp_path / "venv"))
  assert len(where) == 2 and all(os.path.realpath(p).startswith(site) for p in where), where

  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
  assert "test: cIoU@0.5" in text and "peak (x, y):" in text
  assert "Upload skipped" in text and "TensorBoard skipped" in text
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert len(images) >= 4  # loss, overlays by epoch, test report, localized sample
  run = cwd / "run"
  for name in ("notebook_loss.png", "notebook_overlays_by_epoch.png", "notebook_localized.png",
               "eval/test/metrics.json", "eval/test/success_curve.png"):
    assert (run / name).stat().st_size > 0, name
  assert len(os.listdir(run / "overlays")) == 3  # one per epoch
  assert any(".tfevents." in name for name in os.listdir(run))  # what the TensorBoard cell shows
  with open(run / "eval" / "test" / "metrics.json") as f:
    assert json.load(f)["n"] == 64
