"""soundloc_jax.media on real files written by tests/media_fixtures.py."""

import os

import numpy as np
import pytest

from soundloc_jax import media
from soundloc_jax.errors import DatasetError
from tests import media_fixtures as mf


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("media")
  p = lambda name: str(d / name)  # noqa: E731
  wave = mf.tone(3.0, freq=440.0)
  return {
      "wave": wave,
      "wav": mf.write_audio(p("a.wav"), wave),
      "flac_stereo": mf.write_audio(p("a.flac"), wave, channels=2),
      "mp4": mf.write_video(p("v.mp4"), seconds=4.0, audio=mf.tone(4.0, freq=500.0)),
      "mp4_silent": mf.write_video(p("n.mp4"), seconds=2.0),
      "jpg": mf.write_image(p("i.jpg")),
      "gray": mf.write_image(p("g.png"), mode="L"),
      "cmyk": mf.write_image(p("c.jpg"), mode="CMYK"),
      "palette": mf.write_image(p("p.png"), mode="P"),
      "rgba": mf.write_image(p("r.png"), mode="RGBA"),
      "corrupt": mf.write_corrupt(p("bad.mp4")),
      "corrupt_jpg": mf.write_corrupt(p("bad.jpg")),
      "empty": open(p("empty.wav"), "w").close() or p("empty.wav"),
      "missing": p("none.wav"),
  }


def _pcm(wave):
  return np.clip(np.round(wave * 32767), -32768, 32767) / 32768.0


def test_wav_decodes_to_the_written_samples(files):
  x, rate = media.read_audio(files["wav"])
  assert rate == 16000 and x.dtype == np.float32 and x.shape == (48000,)
  np.testing.assert_array_equal(x, _pcm(files["wave"]).astype(np.float32))


def test_stereo_is_the_channel_mean_and_windows_cut_exact_samples(files):
  x, rate = media.read_audio(files["flac_stereo"], start=1.0, duration=0.5)
  assert rate == 16000 and x.shape == (8000,)
  np.testing.assert_array_equal(x, _pcm(files["wave"])[16000:24000].astype(np.float32))


def test_resampling_gives_the_new_rate_and_length(files):
  x, rate = media.read_audio(files["wav"], sample_rate=8000)
  assert rate == 8000 and abs(x.size - 24000) <= 32


def test_video_audio_track_is_the_written_tone(files):
  x, rate = media.read_audio(files["mp4"])
  assert rate == 16000
  assert abs(x.size - 64000) <= 2048  # AAC frames of 1024 samples (+ priming)
  spectrum = np.abs(np.fft.rfft(x[8000:40000]))
  assert np.fft.rfftfreq(32000, 1 / 16000)[np.argmax(spectrum)] == pytest.approx(500.0, abs=1.0)


def test_video_frames_at_middle_start_and_end(files):
  # 40 frames at 10 fps, frame k has colour frame_colour(k); middle = 2.0 s = frame 20.
  for time_s, k in ((None, 20), (0.0, 0), (1.05, 10), (3.95, 39)):
    frame = media.read_video_frame(files["mp4"], time_s)
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
    got = frame[16:32, 16:48].reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(got, mf.frame_colour(k), atol=4, err_msg=f"t={time_s}")


def test_images_of_any_mode_come_back_rgb(files):
  rgb = media.read_image(files["jpg"])
  assert rgb.shape == (40, 60, 3) and rgb.dtype == np.uint8
  assert np.abs(rgb.astype(int) - mf.gradient_image()).mean() < 3
  gray = media.read_image(files["gray"])
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
  for key in ("cmyk", "palette", "rgba"):
    image = media.read_image(files[key])
    assert image.shape == (40, 60, 3) and image.dtype == np.uint8, key


@pytest.mark.parametrize("reader,key,reason", [
    (media.read_audio, "missing", "file not found"),
    (media.read_audio, "empty", "file is empty"),
    (media.read_audio, "corrupt", "cannot be opened"),
    (media.read_audio, "mp4_silent", "has no audio stream"),
    (media.read_video_frame, "wav", "has no video stream"),
    (media.read_video_frame, "corrupt", "cannot be opened"),
    (media.read_image, "corrupt_jpg", "not a readable image"),
    (media.read_image, "missing", "file not found"),
])
def test_bad_files_raise_one_line_errors_naming_the_file(files, reader, key, reason):
  with pytest.raises(DatasetError) as e:
    reader(files[key])
  message = str(e.value)
  assert isinstance(e.value, media.MediaError)
  assert message.startswith(files[key]) and reason in message and "\n" not in message


def test_a_window_past_the_end_is_an_error(files):
  with pytest.raises(media.MediaError, match="no samples after 5.0 s"):
    media.read_audio(files["wav"], start=5.0)
  assert os.path.exists(files["wav"])
