"""Inference (`soundloc_jax.load`, `Localizer`) and the `localize` command line.

One small trained workdir (2 steps of the tiny demo config) serves the module.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import soundloc_jax
from soundloc_jax import audio, checkpointing, data, errors, inference, input_pipeline, localize, train
from soundloc_jax import state as train_state
from soundloc_jax.data_builders.av_digits.av_digits_dataset_builder import synth_waveform
from soundloc_jax.evaluation import protocol
from tests import media_fixtures
from tests.helpers import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(demo_data_dir, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("localize") / "run")
  train.train_and_evaluate(tiny_config(demo_data_dir, max_steps=2), path)
  return path


@pytest.fixture(scope="module")
def localizer(workdir):
  return soundloc_jax.load(workdir)


@pytest.fixture(scope="module")
def example(demo_data_dir):
  """(image uint8 [64, 64, 3] as the evaluator prepares it, 16 kHz waveform of its class)."""
  name, data_dir = data.prepare_data(tiny_config(demo_data_dir))
  source = data.open_source(name, "test", data_dir)
  raw = source[3]
  ex = input_pipeline.preprocess(raw, image_size=64, augment=False,
                                 rng=np.random.default_rng(0), index=3)
  return ex["image"], synth_waveform(int(raw["label"]), np.random.default_rng(7))


def test_localize_equals_trainer_forward_and_protocol_map(localizer, workdir, example):
  image, wave = example
  heat = localizer.localize(image, wave, 16000)
  assert heat.shape == (64, 64) and heat.dtype == np.float32
  assert heat.min() >= 0.0 and heat.max() <= 1.0 and heat.max() == pytest.approx(1.0)

  # The evaluator's path, built independently from the trainer's pieces.
  with open(os.path.join(workdir, "config.json")) as f:
    import ml_collections
    config = ml_collections.ConfigDict(json.load(f))
  graphdef, abstract = train_state.create_train_state(config, train_state.make_optimizer(config))
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  state, _ = ckpt.restore(ckpt.latest_step(), abstract)
  ckpt.close()
  spec = audio.log_spectrogram(wave, 16000, config.audio)
  response = np.asarray(train_state.make_predict_fn(graphdef)(
      state["params"], state["batch_stats"], image[None], spec[None]))
  expected = protocol.localization_map(response, size=config.dataset.image_size)[0]
  np.testing.assert_allclose(localizer.response(image, wave, 16000), response[0], atol=1e-6)
  np.testing.assert_allclose(heat, expected, atol=1e-6)
  assert localizer.step == 2


def test_localize_equals_the_split_evaluator_on_the_same_checkpoint_and_example(
    workdir, localizer, example, demo_data_dir):
  """The evaluator's numbers for an example are the Localizer's: test example 3
  (its image, box and label; its sound as `localize` computes the spectrogram)
  scored by SplitEvaluator with the trainer's restore and predict function
  gives the Localizer's response, heatmap and cIoU."""
  from soundloc_jax.evaluation import evaluators
  image, wave = example
  config = tiny_config(demo_data_dir, **{"eval.batch_size": 1})  # the Localizer's batch
  name, data_dir = data.prepare_data(config)
  raw = data.open_source(name, "test", data_dir)[3]
  spectrogram = audio.log_spectrogram(wave, 16000, config.audio)
  one = [dict(raw, spectrogram=spectrogram)]  # a one-example split
  graphdef, abstract = train_state.create_train_state(config, train_state.make_optimizer(config))
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  state, _ = ckpt.restore(ckpt.latest_step(), abstract)
  ckpt.close()
  predict = train_state.make_predict_fn(graphdef, outputs="all")
  result = evaluators.SplitEvaluator("one", one, config).run(
      lambda im, sp: predict(state["params"], state["batch_stats"], im, sp))
  np.testing.assert_allclose(result.responses[0], localizer.response(image, wave, 16000),
                             atol=1e-6)
  heat = localizer.localize(image, wave, 16000)
  np.testing.assert_allclose(protocol.localization_map(result.responses, 64)[0], heat, atol=1e-6)
  on = protocol.binarize(localizer.response(image, wave, 16000), protocol="fixed",
                         threshold=config.eval.threshold, size=config.eval.size)
  assert result.cious[0] == protocol.ciou(on, result.gt_maps[0])
  assert result.metrics["n"] == 1 and result.localized


def test_grayscale_rgba_stereo_and_resampled_inputs(localizer, example):
  import librosa
  image, wave = example
  gray = image.mean(axis=-1).round().astype(np.uint8)
  np.testing.assert_array_equal(localizer.localize(gray, wave, 16000),
                                localizer.localize(np.repeat(gray[..., None], 3, -1), wave, 16000))
  rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 77, np.uint8)], axis=-1)
  base = localizer.localize(image, wave, 16000)
  np.testing.assert_array_equal(localizer.localize(rgba, wave, 16000), base)
  np.testing.assert_allclose(localizer.localize(image, np.stack([wave, wave], 1), 16000), base,
                             atol=1e-6)
  wave_22k = librosa.resample(wave, orig_sr=16000, target_sr=22050)
  heat = localizer.localize(image, wave_22k, 22050)
  assert heat.shape == (64, 64) and np.isfinite(heat).all()
  assert heat.min() >= 0.0 and heat.max() <= 1.0
  # A bigger, non-square image goes through the test transform to the same size.
  assert localizer.localize(np.tile(image, (2, 3, 1)), wave, 16000).shape == (64, 64)
  with pytest.raises(errors.InputError, match="uint8"):
    localizer.localize(image.astype(np.float32), wave, 16000)
  with pytest.raises(errors.InputError, match="empty"):
    localizer.localize(image, np.zeros(0, np.float32), 16000)


def test_peak_maps_the_crop_back_to_the_original_image():
  # A bright square at (x 140..150, y 40..50) of a 100 x 300 image: find it in
  # the 64 x 64 centre crop the model sees, then map back.
  image = np.zeros((100, 300, 3), np.uint8)
  image[40:50, 140:150] = 255
  crop = input_pipeline.center_crop_resize(image, 64).astype(np.float32).mean(-1)
  x, y = inference.peak(crop, image.shape)
  assert 140 <= x < 150 and 40 <= y < 50
  assert inference.crop_box(image.shape, 64) == pytest.approx((100, 0, 200, 100))
  heat = np.zeros((64, 64), np.float32)
  heat[32, 0] = 1
  assert inference.peak(heat) == (0, 32)
  assert inference.peak(heat, (100, 300)) == (100, 50)
  heat[:] = 0
  heat[:8, :8] = 1  # a flat maximum (bilinear upsampling at a border): its centre
  assert inference.peak(heat) in {(3, 3), (4, 4)}


def test_load_errors_name_the_workdir(workdir, tmp_path):
  with pytest.raises(errors.WorkdirError, match="does not exist"):
    soundloc_jax.load(str(tmp_path / "nowhere"))
  with pytest.raises(errors.WorkdirError, match="config.json"):
    soundloc_jax.load(str(tmp_path))
  other = tmp_path / "wider"
  shutil.copytree(workdir, other)
  with open(other / "config.json") as f:
    config = json.load(f)
  config["model"]["width"] = 8
  with open(other / "config.json", "w") as f:
    json.dump(config, f)
  with pytest.raises(errors.CheckpointMismatchError, match="model.width") as info:
    soundloc_jax.load(str(other))
  assert str(other) in str(info.value)


def test_import_stays_light():
  proc = subprocess.run([sys.executable, "-c", "import soundloc_jax, sys; "
                         "print(sorted(m for m in ('jax', 'flax', 'orbax') if m in sys.modules))"],
                        cwd=REPO, capture_output=True, text=True, timeout=60)
  assert proc.stdout.strip() == "[]", proc.stderr


def _write_inputs(directory, image, wave):
  import soundfile as sf
  from PIL import Image
  img_path = os.path.join(directory, "scene.png")
  Image.fromarray(image).resize((96, 72), Image.BICUBIC).save(img_path)
  wav_path = os.path.join(directory, "sound.wav")
  sf.write(wav_path, np.stack([wave, wave], 1), 16000)
  return img_path, wav_path


def test_cli_writes_overlay_and_prints_the_peak(workdir, localizer, example, tmp_path):
  img_path, wav_path = _write_inputs(str(tmp_path), *example)
  proc = subprocess.run([sys.executable, "-m", "soundloc_jax.localize", f"--workdir={workdir}",
                         f"--image={img_path}", f"--audio={wav_path}"],
                        cwd=REPO, capture_output=True, text=True, timeout=180)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert not proc.stderr.strip(), proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1
  m = re.fullmatch(r"peak \(x=(\d+), y=(\d+)\) in (.+); overlay written to (.+)", lines[0])
  assert m and m.group(3) == img_path
  out = os.path.join(str(tmp_path), "scene_soundloc.png")
  assert m.group(4) == out
  from PIL import Image
  with Image.open(out) as im:
    assert im.format == "PNG" and min(im.size) > 100
  # Same answer as the library on the same files.
  image = localize.read_image(img_path)
  wave, rate = localize.read_audio(wav_path)
  expected = localizer.peak(localizer.localize(image, wave, rate), image.shape)
  assert (int(m.group(1)), int(m.group(2))) == expected
  assert 0 <= expected[0] < 96 and 0 <= expected[1] < 72


# Bad inputs at the command line (files, workdirs, flags): tests/bad_input_test.py.


def _video_with_centred_tone(path):
  """2 s at 10 fps (frame k has colour `frame_colour(k)`), sound only in
  0.75..1.25 s: the 0.5 s window around the middle frame."""
  rate = 16000
  pcm = np.zeros(2 * rate, np.float32)
  pcm[int(0.75 * rate):int(1.25 * rate)] = media_fixtures.tone(0.5, rate, amp=0.5)
  return media_fixtures.write_video(path, seconds=2.0, fps=10, audio=pcm, rate=rate)


def test_read_video_takes_the_frame_and_the_sound_centred_on_it(tmp_path):
  path = _video_with_centred_tone(str(tmp_path / "clip.mp4"))
  rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
  frame, wave, rate = localize.read_video(path, None, 0.5)  # the middle: 1.0 s
  assert rate == 16000 and wave.shape == (8000,)
  assert rms(wave) > 0.25  # the tone (rms 0.35) fills the window
  assert np.abs(frame.astype(int) - media_fixtures.frame_colour(10)).mean() < 6
  frame, wave, _ = localize.read_video(path, 0.25, 0.5)  # 0..0.5 s: silence
  assert rms(wave) < 0.02
  assert np.abs(frame.astype(int) - media_fixtures.frame_colour(2)).mean() < 6


def test_cli_localizes_a_video(workdir, localizer, tmp_path):
  path = _video_with_centred_tone(str(tmp_path / "clip.mp4"))
  proc = subprocess.run([sys.executable, "-m", "soundloc_jax.localize", f"--workdir={workdir}",
                         f"--video={path}"], cwd=REPO, capture_output=True, text=True,
                        timeout=180)
  assert proc.returncode == 0, proc.stderr[-2000:]
  m = re.fullmatch(r"peak \(x=(\d+), y=(\d+)\) in (.+); overlay written to (.+)",
                   proc.stdout.strip())
  assert m and m.group(3) == path and os.path.exists(m.group(4))
  frame, wave, rate = localize.read_video(path, None, 0.5)  # the demo run's clip
  expected = localizer.peak(localizer.localize(frame, wave, rate), frame.shape)
  assert (int(m.group(1)), int(m.group(2))) == expected


@pytest.mark.parametrize("argv,message", [
    (["--image=a.png", "--video=c.mp4"], "give --video or --image, not both"),
    (["--image=a.png", "--audio=b.wav", "--time=1"], "--time only applies to --video"),
    (["--image=a.png"], "missing --audio (or give --video)"),
])
def test_video_flag_combinations(capsys, argv, message):
  assert localize.main(["--workdir=w", *argv]) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1
