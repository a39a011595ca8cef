"""The extended Flickr-SoundNet and VGG-SS test sets (SLAVC's lists of pairs
whose source is not in the frame) in their builders: the list format on a
fixture written as the released files are (CRLF, a header, `non-sounding`
rows), its errors, the `test_offscreen` splits and the extended set
`test+test_offscreen` scored by the evaluator."""

import importlib
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from soundloc_jax import builder_lib, data
from soundloc_jax.errors import MediaError
from soundloc_jax.evaluation import annotations, evaluators
from tests import media_fixtures as mf

# As the released metadata/flickr_test_plus_silent.csv starts (CRLF line ends;
# the last line has none), plus a `sounding` row, a repeat and an extension.
RELEASED = ("video,audio,label\r\n10000130166,10437048305,non-sounding\r\n"
            "10007936344,10079676496,non-sounding\r\n10013411946,10013411946,sounding\r\n"
            "10007936344.jpg,10079676496.wav,non-sounding\r\n\r\n"
            "9761803312 , 3109408703,non-sounding")


def test_the_released_list_format_is_read(tmp_path):
  path = tmp_path / "flickr_test_plus_silent.csv"
  path.write_bytes(RELEASED.encode())
  assert builder_lib.read_offscreen_pairs(path) == [
      ("10000130166", "10437048305"), ("10007936344", "10079676496"),
      ("9761803312", "3109408703")]
  assert builder_lib.offscreen_id("a", "b") == "a__b"


@pytest.mark.parametrize("text,message", [
    ("", "line 1: expected the header 'video,audio,label', got 'an empty file'"),
    ("id,label\n1,non-sounding\n", "line 1: expected the header"),
    ("video,audio,label\n1,2\n", "line 2: expected 'video,audio,label'"),
    ("video,audio,label\n\n1,,non-sounding\n", "line 3: expected"),
    ("video,audio,label\n1,2,silent\n", "line 2: unknown label 'silent'"),
])
def test_a_bad_list_is_one_error_naming_the_file_and_line(tmp_path, text, message):
  path = tmp_path / "bad.csv"
  path.write_text(text)
  with pytest.raises(MediaError, match=f"bad.csv: {message}"):
    builder_lib.read_offscreen_pairs(path)


def _build(name, config, manual_dir, data_dir):
  cls = importlib.import_module(f"soundloc_jax.data_builders.{name}.{name}_dataset_builder").Builder
  os.environ[builder_lib.WORKERS_ENV] = "1"
  try:
    builder = cls(config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  finally:
    del os.environ[builder_lib.WORKERS_ENV]
  return builder


def _score(name, data_dir):
  """The extended set `test+test_offscreen` through the evaluator, with a map
  that lights the whole frame for every pair."""
  from soundloc_jax.configs import default
  config = default.get_config()
  config.dataset.image_size = config.eval.size = 224
  config.eval.protocol, config.eval.batch_size = "median", 4
  source = data.open_source(name, "test+test_offscreen", data_dir)
  assert annotations.source_is_annotated(source)
  result = evaluators.SplitEvaluator("test+test_offscreen", source, config,
                                     ("localization", "extended")).run(
      lambda image, spec: np.ones((len(image), 7, 7), np.float32))
  return source, result.metrics


def test_extended_flickr_soundnet(tmp_path):
  manual = tmp_path / "flickr"
  mf.flickr_layout(str(manual), n_train=4)
  (manual / "flickr_test_plus_silent.csv").write_bytes(
      b"video,audio,label\r\nt0,t1,non-sounding\r\nt1,1000,non-sounding\r\n"
      b"t2,t0,non-sounding\r\nt0,nowhere,non-sounding")
  builder = _build("flickr_soundnet", "10k", manual, tmp_path / "data")
  meta = builder.info.metadata
  assert meta["offscreen_splits"] == ["test_offscreen"]
  assert meta["missing_offscreen_pairs"] == ["t0__nowhere"]
  off = builder.as_data_source()["test_offscreen"]
  assert sorted(off[i]["id"].decode() for i in range(len(off))) == ["t0__t1", "t1__1000", "t2__t0"]
  for i in range(len(off)):
    assert off[i]["gt_boxes"].shape == (0, 4) and off[i]["waveform"].size > 0
  source, m = _score("flickr_soundnet/10k", str(tmp_path / "data"))
  assert len(source) == 2 + 3
  assert m["n_visible"] == 2 and m["n_offscreen"] == 3 and m["n"] == 5
  assert m["false_alarm"] == 1.0 and all(np.isfinite(v) for v in m.values())


def test_extended_vggss(tmp_path):
  manual = tmp_path / "vgg"
  mf.vggsound_layout(str(manual), n_train=1)
  (manual / "vggss_test_plus_silent.csv").write_text(
      "video,audio,label\nv0,v1,non-sounding\nv1,v1,non-sounding\n"
      "v0,yt000_000000,non-sounding\nv2,v0,non-sounding\n")
  builder = _build("vggss", "default", manual, tmp_path / "data")
  meta = builder.info.metadata
  assert meta["offscreen_splits"] == ["test_offscreen"]
  assert meta["missing_offscreen_pairs"] == ["v2__v0"]
  off = builder.as_data_source()["test_offscreen"]
  examples = {off[i]["id"].decode(): off[i] for i in range(len(off))}
  assert sorted(examples) == ["v0__v1", "v0__yt000_000000", "v1__v1"]
  test = builder.as_data_source()["test"]
  frames = {test[i]["id"].decode(): test[i]["image"] for i in range(len(test))}
  # the frame of the pair is the clip's test frame; the sound another clip's
  np.testing.assert_array_equal(examples["v0__v1"]["image"], frames["v0"])
  assert not np.array_equal(examples["v0__v1"]["spectrogram"],
                            examples["v0__yt000_000000"]["spectrogram"])
  for ex in examples.values():
    assert ex["gt_boxes"].shape == (0, 4) and ex["class_name"] == b""
  _, m = _score("vggss", str(tmp_path / "data"))
  assert m["n_visible"] == 2 and m["n_offscreen"] == 3
  assert all(np.isfinite(v) for v in m.values())


@pytest.mark.parametrize("method", ["lvs", "hard_positive", "ezvsl"])
@pytest.mark.parametrize("preset", ["vggsound_144k_extended", "flickr_144k_extended"])
def test_the_extended_presets_score_the_extended_sets(method, preset):
  """SLAVC's setting: the base preset's data and recipe, the extended test
  set (test + test_offscreen of the same builder) and the extended evaluator."""
  from soundloc_jax.configs import datasets
  config = importlib.import_module(f"soundloc_jax.configs.{method}").get_config(preset)
  base = importlib.import_module(f"soundloc_jax.configs.{method}").get_config(
      preset.removesuffix("_extended"))
  assert config.dataset.name == base.dataset.name and config.batch_size == base.batch_size
  assert config.evals.test == ("localization", "extended")
  assert all(entry.endswith("test+test_offscreen") for entry in config.dataset.test_splits)
  assert [e.replace("+test_offscreen", "") for e in config.dataset.test_splits] == list(
      base.dataset.test_splits)
  assert preset in datasets.EXTENDED_PRESETS
