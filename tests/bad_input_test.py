"""Bad input at the three command lines, as one table.

Each row runs `python -m soundloc_jax.main` or `python -m
soundloc_jax.tfds_build` (subprocesses: absl flags are process-global) or
`soundloc_jax.localize.main` (in-process) and expects
either a refusal (exit code 2, exactly one line on stderr, starting with
"error:" and naming the offending path or key, no traceback) or, for inputs
that are converted rather than refused, a normal run (exit 0).

Decisions the table pins down: grayscale, palette and CMYK images are
converted to RGB; images over `localize.MAX_MEGAPIXELS` (50) are refused (a
decompression-bomb guard; downscale first); audio at any sample rate is
resampled to the run's; a video given as `--audio` is refused with the
way to pass it (`--video`); a video with no sound track given to
`localize --video` is refused.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from soundloc_jax.data_builders.av_digits.av_digits_dataset_builder import synth_waveform
from soundloc_jax import data, localize, train
from tests import media_fixtures
from tests.helpers import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny config of `tiny_config(data_dir, max_steps=2)` as command-line flags.
TINY_FLAGS = ["--config=configs/iterative.py", "--config.model.width=4", "--config.batch_size=32",
              "--config.num_epochs=3", "--config.method.init_epochs=1",
              "--config.log_every_steps=4", "--config.eval.batch_size=64",
              "--config.eval.num_overlays=4", "--config.max_steps=2"]


@dataclasses.dataclass
class Case:
  entry: str         # "main", "localize" or "tfds_build"
  argv: list
  names: tuple = ()  # substrings the error line must hold (path / key); () = must work


@pytest.fixture(scope="module")
def ctx(demo_data_dir, tmp_path_factory):
  """A trained workdir, good inputs and the bad files, in one folder."""
  import soundfile as sf
  from PIL import Image
  d = str(tmp_path_factory.mktemp("bad_input"))
  p = lambda name: os.path.join(d, name)  # noqa: E731
  workdir = p("run")
  train.train_and_evaluate(tiny_config(demo_data_dir, max_steps=2), workdir)
  name, data_dir = data.prepare_data(tiny_config(demo_data_dir))
  raw = data.open_source(name, "test", data_dir)[3]
  image = np.asarray(raw["image"])
  wave = synth_waveform(int(raw["label"]), np.random.default_rng(7))

  Image.fromarray(image).resize((96, 72), Image.BICUBIC).save(p("scene.png"))
  sf.write(p("sound.wav"), np.stack([wave, wave], 1), 16000)
  Image.fromarray(image).convert("L").save(p("gray.png"))
  Image.fromarray(image).convert("CMYK").save(p("cmyk.jpg"))
  Image.fromarray(image).convert("P").save(p("palette.png"))
  import librosa
  sf.write(p("sound_8k.wav"), librosa.resample(wave, orig_sr=16000, target_sr=8000), 8000)
  sf.write(p("sound_44k.flac"), librosa.resample(wave, orig_sr=16000, target_sr=44100), 44100)
  with open(p("corrupt.jpg"), "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
  sf.write(p("silence.wav"), np.zeros((0,), np.float32), 16000)
  open(p("empty.wav"), "wb").close()
  with open(p("notes.wav"), "w") as f:
    f.write("this is text, not audio\n")
  with open(p("sound.xyz"), "wb") as f:
    f.write(b"\0" * 64)
  with open(p("clip.mp4"), "wb") as f:
    f.write(b"\0\0\0\x18ftypmp42" + b"\0" * 64)
  Image.new("1", (8000, 7000)).save(p("huge.png"))  # 56 MP, a few KB
  media_fixtures.write_video(p("silent_clip.mp4"), seconds=1.0, audio=None)  # no sound track
  os.makedirs(p("untrained"))
  shutil.copy(os.path.join(workdir, "config.json"), p("untrained"))
  shutil.copytree(workdir, p("wider"))
  with open(p("wider/config.json")) as f:
    config = json.load(f)
  config["model"]["width"] = 8
  with open(p("wider/config.json"), "w") as f:
    json.dump(config, f)
  os.makedirs(p("empty_data"))
  # manual_dirs of the dataset builders, each with one fault.
  faults = {"zero_wav": lambda r: open(os.path.join(r, "img01.wav"), "wb").close(),
            "corrupt_jpg": lambda r: media_fixtures.write_corrupt(os.path.join(r, "img01.jpg")),
            "no_wav": lambda r: os.remove(os.path.join(r, "img01.wav")),
            "json_key": lambda r: _write_json(os.path.join(r, "ann00.json"), {"box": [[1, 2, 3, 4]]})}
  for name, fault in faults.items():
    media_fixtures.folder_layout(p(f"folder_{name}"), n_train=3)
    fault(p(f"folder_{name}"))
  media_fixtures.vggsound_layout(p("vggss_bad_json"), n_train=2)
  with open(p("vggss_bad_json/vggss.json"), "w") as f:
    f.write('[{"file": ')
  return {"d": d, "workdir": workdir, "data_dir": demo_data_dir}


def _write_json(path, value):
  with open(path, "w") as f:
    json.dump(value, f)


def _cases(c):
  d, w, data = c["d"], c["workdir"], c["data_dir"]
  p = lambda name: os.path.join(d, name)  # noqa: E731
  img, wav = p("scene.png"), p("sound.wav")
  loc = lambda image=img, audio=wav, workdir=w: Case(  # noqa: E731
      "localize", [f"--workdir={workdir}", f"--image={image}", f"--audio={audio}",
                   f"--out={p('overlay.png')}"])
  main = lambda *flags, workdir=p("new_run"): Case(  # noqa: E731
      "main", [*TINY_FLAGS, f"--config.dataset.data_dir={data}", f"--workdir={workdir}", *flags])

  def refused(case, *names):
    return dataclasses.replace(case, names=names)

  def build(builder, *flags):
    return Case("tfds_build", [f"data_builders/{builder}", f"--data_dir={p('tfds_out')}", *flags])

  return {
      # --- python -m soundloc_jax.main ---
      "unknown config key": refused(main("--config.method.tua=0.1"), "--config.method.tua"),
      "ill-typed config value (int)": refused(main("--config.batch_size=abc"),
                                              "--config.batch_size"),
      "ill-typed config value (bool)": refused(main("--config.dataset.augment=maybe"),
                                               "--config.dataset.augment"),
      "unknown config value": refused(main("--config.optimizer.name=adamm"),
                                      "config.optimizer.name", "adamm"),
      "unknown preset": refused(Case("main", ["--config=configs/iterative.py:no_such_preset",
                                              f"--workdir={p('new_run')}"]), "no_such_preset"),
      "missing config file": refused(Case("main", ["--config=configs/no_such_file.py",
                                                   f"--workdir={p('new_run')}"]),
                                     "configs/no_such_file.py"),
      "bad method value (HardPos positives)": refused(
          Case("main", ["--config=configs/hard_positive.py:,neighbours=random",
                        "--config.method.positives=bx", f"--config.dataset.data_dir={data}",
                        f"--workdir={p('new_run')}"]), "config.method.positives", "'bx'"),
      "dataset not built": refused(main("--config.dataset.name=flickr_soundnet/10k",
                                        f"--config.dataset.data_dir={p('empty_data')}"),
                                   "flickr_soundnet", p("empty_data")),
      "workdir holds a different config": refused(main("--config.method.tau=0.2", workdir=w),
                                                  w, "method.tau"),
      "init_from a run of another model": refused(
          main(f"--config.model.init_from={p('wider')}"), "config.model.init_from", p("wider"),
          "model.width: 8 there, 4 here"),
      "checkpoint of another model (--mode=eval)": refused(
          main("--config.model.width=8", "--mode=eval", workdir=w),
          os.path.join(w, "checkpoints"), "model.width=4", "model.width=8"),
      # --- python -m soundloc_jax.localize ---
      "missing image": refused(loc(image=p("nope.jpg")), p("nope.jpg")),
      "corrupt image": refused(loc(image=p("corrupt.jpg")), p("corrupt.jpg")),
      "huge image (over 50 MP)": refused(loc(image=p("huge.png")), p("huge.png"), "megapixel"),
      "grayscale image (converted)": loc(image=p("gray.png")),
      "CMYK image (converted)": loc(image=p("cmyk.jpg")),
      "palette image (converted)": loc(image=p("palette.png")),
      "zero-length audio": refused(loc(audio=p("silence.wav")), p("silence.wav")),
      "empty audio file": refused(loc(audio=p("empty.wav")), p("empty.wav")),
      "text as audio": refused(loc(audio=p("notes.wav")), p("notes.wav")),
      "unsupported audio extension": refused(loc(audio=p("sound.xyz")), p("sound.xyz")),
      "video as audio": refused(loc(audio=p("clip.mp4")), p("clip.mp4")),
      "video without audio (--video)": Case(
          "localize", [f"--workdir={w}", f"--video={p('silent_clip.mp4')}",
                       f"--out={p('overlay.png')}"], (p("silent_clip.mp4"),)),
      "8 kHz audio (resampled)": loc(audio=p("sound_8k.wav")),
      "44.1 kHz audio (resampled)": loc(audio=p("sound_44k.flac")),
      "workdir without checkpoint": refused(loc(workdir=p("untrained")), p("untrained")),
      "checkpoint of another model": refused(loc(workdir=p("wider")), p("wider"),
                                             "model.width=4", "model.width=8"),
      "missing workdir": refused(loc(workdir=p("nowhere")), p("nowhere")),
      # --- python -m soundloc_jax.tfds_build ---
      "build: zero-length audio file": refused(
          build("folder", f"--manual_dir={p('folder_zero_wav')}"),
          os.path.join(p("folder_zero_wav"), "img01.wav"), "empty"),
      "build: corrupt image file": refused(
          build("folder", f"--manual_dir={p('folder_corrupt_jpg')}"),
          os.path.join(p("folder_corrupt_jpg"), "img01.jpg")),
      "build: missing sound file": refused(
          build("folder", f"--manual_dir={p('folder_no_wav')}"),
          os.path.join(p("folder_no_wav"), "img01.jpg"), "no sound file"),
      "build: annotation JSON without 'boxes'": refused(
          build("folder", f"--manual_dir={p('folder_json_key')}"),
          os.path.join(p("folder_json_key"), "ann00.json"), "'boxes'"),
      "build: annotation file not JSON": refused(
          build("vggss", f"--manual_dir={p('vggss_bad_json')}"),
          os.path.join(p("vggss_bad_json"), "vggss.json")),
      "build: missing manual_dir": refused(build("folder", f"--manual_dir={p('no_such_dir')}"),
                                           p("no_such_dir"), "manual_dir"),
      "build: empty manual_dir": refused(build("flickr_soundnet", "--config=10k",
                                               f"--manual_dir={p('empty_data')}"),
                                         p("empty_data"), "is empty"),
      "build: unknown config": refused(build("flickr_soundnet", "--config=5k",
                                             f"--manual_dir={p('folder_no_wav')}"),
                                       "'5k'", "10k, 20k, 144k"),
      "build: unknown builder": refused(Case("tfds_build", ["data_builders/no_such_builder"]),
                                        "data_builders/no_such_builder", "data_builders/folder"),
  }


# The case names come from the table itself (its paths do not matter for that).
CASES = list(_cases({"d": "", "workdir": "", "data_dir": ""}))


def _run(case, capsys):
  if case.entry == "localize":
    code = localize.main(case.argv)
    out = capsys.readouterr()
    return code, out.out, out.err
  env = dict(os.environ, SOUNDLOC_BUILD_WORKERS="1")  # no worker pool for 5 examples
  proc = subprocess.run([sys.executable, "-m", f"soundloc_jax.{case.entry}", *case.argv],
                        cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
  return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("name", CASES)
def test_bad_input(name, ctx, capsys):
  case = _cases(ctx)[name]
  code, out, err = _run(case, capsys)
  if not case.names:  # converted, not refused: the normal one-line answer
    assert code == 0, err[-2000:]
    assert out.strip().startswith("peak (x=") and out.strip().count("\n") == 0, out
    return
  lines = [l for l in err.splitlines() if l.strip()]
  assert code == 2, (code, err[-2000:])
  assert len(lines) == 1 and lines[0].startswith("error:"), err[-2000:]
  assert "Traceback" not in err
  for needle in case.names:
    assert needle in lines[0], (needle, lines[0])
  if case.entry == "localize":
    assert not out


def test_bad_input_from_the_shell(ctx):
  """The same one line through `python -m soundloc_jax.localize`."""
  case = _cases(ctx)["corrupt image"]
  proc = subprocess.run([sys.executable, "-m", "soundloc_jax.localize", *case.argv], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().count("\n") == 0 and case.names[0] in proc.stderr
  assert "Traceback" not in proc.stderr
