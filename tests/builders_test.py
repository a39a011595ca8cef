"""Real-dataset builders on generated fixtures (tests/media_fixtures.py layouts).

Each builder is built with the command-line entry point (subprocesses, run
concurrently, 2 preparation workers) and with the Python API (in-process, 1
worker); the two must hold identical examples. Then: shapes, dtypes, ids,
boxes, the front end against scipy, the ground-truth maps against the
official functions, a fresh-process read, the bad-file policy and presets.
"""

import importlib
import importlib.util
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from soundloc_jax import builder_lib, data, input_pipeline
from soundloc_jax.evaluation import annotations, evaluators, protocol
from soundloc_jax.errors import DatasetError
from tests import media_fixtures as mf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (dataset, config, manual layout key)
BUILDS = [("folder", "default", "folder"), ("flickr_soundnet", "10k", "flickr"),
          ("vggsound", "full", "vgg"), ("vggss", "default", "vgg"),
          ("music_synthetic", "default", "music")]


def _builder_class(name):
  return importlib.import_module(f"soundloc_jax.data_builders.{name}.{name}_dataset_builder").Builder


def _api_build(name, config, manual_dir, data_dir):
  builder = _builder_class(name)(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def _env(**extra):
  env = dict(os.environ, PYTHONPATH=REPO, **extra)
  return env


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("builders")
  manual = {key: str(root / key) for key in ("folder", "flickr", "vgg", "music")}
  truth = {"folder": mf.folder_layout(manual["folder"]), "flickr": mf.flickr_layout(manual["flickr"]),
           "vgg": mf.vggsound_layout(manual["vgg"]), "music": mf.music_layout(manual["music"])}
  cli_dir, api_dir = str(root / "cli"), str(root / "api")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "soundloc_jax.tfds_build", f"data_builders/{name}",
       f"--manual_dir={manual[key]}", f"--data_dir={cli_dir}", f"--config={config}"],
      cwd=REPO, env=_env(SOUNDLOC_BUILD_WORKERS="2"), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for name, config, key in BUILDS]
  for name, config, key in BUILDS + [("vggsound", "144k", "vgg")]:
    os.environ[builder_lib.WORKERS_ENV] = "1"
    try:
      _api_build(name, config, manual[key], api_dir)
    finally:
      del os.environ[builder_lib.WORKERS_ENV]
  for proc, (name, _, _) in zip(procs, BUILDS):
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{name}: {out[-3000:]}"
  return {"manual": manual, "truth": truth, "cli": cli_dir, "api": api_dir}


def _source(data_dir, name, split):
  return tfds.data_source(name, split=split, data_dir=data_dir)


def _by_id(source):
  return {ex["id"].decode(): ex for ex in (source[i] for i in range(len(source)))}


def _splits(data_dir, name):
  return tfds.builder(name, data_dir=data_dir).info.splits.keys()


def test_cli_and_api_builds_hold_identical_examples(built):
  for name, config, _ in BUILDS:
    full = f"{name}/{config}"
    assert set(_splits(built["cli"], full)) == set(_splits(built["api"], full))
    for split in _splits(built["api"], full):
      cli, api = _by_id(_source(built["cli"], full, split)), _by_id(_source(built["api"], full, split))
      assert sorted(cli) == sorted(api), (full, split)
      for ident, ex in api.items():
        for key, value in ex.items():
          np.testing.assert_array_equal(cli[ident][key], value, err_msg=f"{full} {split} {ident} {key}")


def test_folder_splits_shapes_dtypes_and_boxes(built):
  data = built["api"]
  train, val = _by_id(_source(data, "folder", "train")), _by_id(_source(data, "folder", "validation"))
  test = _by_id(_source(data, "folder", "test"))
  every = [f"img{i:02d}" for i in range(10)] + ["clip00"]
  assert set(val) == builder_lib.validation_ids(every) and len(val) == 1
  assert sorted(set(train) | set(val)) == sorted(every) and not set(train) & set(val)
  assert sorted(test) == ["ann00", "ann01"]
  ex = train["img03"]
  assert ex["image"].shape == (246, 369, 3) and ex["image"].dtype == np.uint8  # 60x90 -> 246 short
  assert ex["spectrogram"].shape == (257, 299) and ex["spectrogram"].dtype == np.float16
  assert ex["waveform"].shape == (0,) and ex["gt_boxes"].shape == (0, 4)
  assert train["clip00"]["image"].shape == (246, 328, 3)  # 48x64 video frame
  # 80x120 -> 224x336, centre crop from x = 56: boxes in test-view pixels, clipped.
  np.testing.assert_array_equal(test["ann00"]["gt_boxes"], [[0, 14, 84, 112]])
  np.testing.assert_allclose(test["ann01"]["gt_boxes"], [[0, 0, 28, 84], [56, 56, 224, 224]],
                             atol=1e-4)
  for ident, k in (("ann00", 20), ("ann01", 21)):
    t = test[ident]
    assert t["image"].shape == (224, 224, 3) and t["waveform"].dtype == np.int16
    np.testing.assert_array_equal(t["waveform"], mf.train_pcm(k, seconds=12.0)[:160000])
  # PNG test view: exactly the centre crop of the decoded original.
  from soundloc_jax import media
  original = media.read_image(os.path.join(built["manual"]["folder"], "ann00.png"))
  np.testing.assert_array_equal(test["ann00"]["image"],
                                input_pipeline.center_crop_resize(original, 224))


def _reference_log_psd(pcm, noverlap, seconds):
  from scipy import signal
  x = pcm.astype(np.float64)[:int(16000 * seconds)] / 32768.0
  _, _, spec = signal.spectrogram(x, 16000, nperseg=512, noverlap=noverlap)
  return np.log(spec + 1e-7) / 12


def test_stored_and_lvs_test_spectrograms_match_scipy(built):
  data = built["api"]
  train = _by_id(_source(data, "folder", "train"))
  ident = next(i for i in train if i.startswith("img"))
  ref = _reference_log_psd(mf.train_pcm(int(ident[3:])), 353, 3.0)  # the whole 3 s sound
  assert ref.shape == (257, 299)
  np.testing.assert_allclose(train[ident]["spectrogram"].astype(np.float64), ref, rtol=2 ** -11,
                             atol=1e-6)  # float16 storage
  from soundloc_jax import audio
  from soundloc_jax.configs import default
  f32 = audio.log_spectrogram(mf.train_pcm(int(ident[3:])) / np.float32(32768), 16000,
                              default.LVS_AUDIO)
  np.testing.assert_allclose(f32, ref, rtol=1e-5, atol=1e-5)
  # eval.audio = "lvs_test": the LVS test front end on the stored first 10 s.
  source = _source(data, "folder", "test")
  batch = next(input_pipeline.eval_batches(source, batch_size=2, image_size=224,
                                           gt_format="pixels", eval_audio="lvs_test"))
  k = {b"ann00": 20, b"ann01": 21}[batch["id"][0]]
  ref10 = _reference_log_psd(mf.train_pcm(k, seconds=12.0), 274, 10.0)
  assert batch["spectrogram"].shape == (2, 257, 671)
  np.testing.assert_allclose(batch["spectrogram"][0], ref10, rtol=1e-5, atol=1e-5)


def _gt_maps(data_dir, name):
  source = _source(data_dir, name, "test")
  gt_format = annotations.gt_format_of(source)
  batch = next(input_pipeline.eval_batches(source, batch_size=len(source), image_size=224,
                                           gt_format=gt_format, gt_size=224))
  maps = annotations.gt_maps_from_batch(batch, 224, 224)
  return gt_format, {i.decode(): m for i, m in zip(batch["id"], maps)}


def test_gt_maps_equal_the_official_functions_of_the_raw_annotations(built):
  data, truth = built["api"], built["truth"]
  fmt, maps = _gt_maps(data, "flickr_soundnet/10k")
  assert fmt == "flickr256" and sorted(maps) == ["t0", "t1"]
  for ident, xml in truth["flickr"]["xml"].items():
    expected = annotations.flickr_gt_map(xml, 224)
    assert set(np.unique(expected)) == {0.0, 0.5, 1.0}
    np.testing.assert_array_equal(maps[ident], expected)
  fmt, maps = _gt_maps(data, "vggss")
  assert fmt == "unit" and sorted(maps) == ["v0", "v1"]
  for item in truth["vgg"]["annotations"][:2]:
    np.testing.assert_array_equal(maps[item["file"]], annotations.vggss_gt_map(item["bbox"], 224))
  fmt, maps = _gt_maps(data, "music_synthetic")
  assert fmt == "pixels" and sorted(maps) == ["test000", "test001"]
  for ident, boxes in built["truth"]["music"].items():  # 64x64 grid -> 224: x 3.5, no crop
    np.testing.assert_array_equal(maps[ident], annotations.box_gt_map(np.multiply(boxes, 3.5), 224))
    assert maps[ident].sum() == 2 * 112 * 112
  fmt, maps = _gt_maps(data, "folder")
  assert fmt == "pixels"
  np.testing.assert_array_equal(maps["ann01"], annotations.box_gt_map(
      [[0, 0, 28, 84], [56, 56, 224, 224]], 224))


def test_flickr_reports_missing_test_ids_and_keeps_test_out_of_training(built):
  data, truth = built["api"], built["truth"]["flickr"]
  meta = tfds.builder("flickr_soundnet/10k", data_dir=data).info.metadata
  assert meta["missing_test_ids"] == ["t2"] and meta["test_ids_removed_from_train"] == 1
  assert meta["gt_format"] == "flickr256" and meta["skipped"] == []
  ids = set(_by_id(_source(data, "flickr_soundnet/10k", "train")))
  val = set(_by_id(_source(data, "flickr_soundnet/10k", "validation")))
  assert ids | val == set(truth["train_ids"]) and not ids & val and "t1" not in ids


def test_vggsound_configs_and_vggss_annotations(built):
  data, truth = built["api"], built["truth"]["vgg"]
  full = set(_by_id(_source(data, "vggsound/full", "train"))) | set(
      _by_id(_source(data, "vggsound/full", "validation")))
  assert full == set(truth["ids"])  # v0.mp4 is a VGG-SS test clip: kept out
  assert tfds.builder("vggsound/full", data_dir=data).info.metadata["vggss_ids_removed"] == 1
  sub = set(_by_id(_source(data, "vggsound/144k", "train"))) | set(
      _by_id(_source(data, "vggsound/144k", "validation")))
  assert sub == set(truth["ids"][:-1])
  test = _by_id(_source(data, "vggss", "test"))
  assert tfds.builder("vggss", data_dir=data).info.metadata["missing_test_ids"] == ["v2"]
  assert test["v0"]["class_name"] == b"playing violin"
  np.testing.assert_array_equal(test["v0"]["gt_boxes"],
                                np.float32(truth["annotations"][0]["bbox"]))  # raw, unclipped
  assert test["v1"]["waveform"].shape == (160000,) and test["v0"]["image"].shape == (224, 224, 3)


def test_a_fresh_process_reads_every_build(built):
  code = ("import json, sys, tensorflow_datasets as tfds\n"
          "out = {}\n"
          "for name in sys.argv[2:]:\n"
          "  for split in ('train', 'validation', 'test'):\n"
          "    try: src = tfds.data_source(name, split=split, data_dir=sys.argv[1])\n"
          "    except Exception: continue\n"
          "    out[name + ':' + split] = sorted(src[i]['id'].decode() for i in range(len(src)))\n"
          "print(json.dumps(out))\n")
  names = [f"{n}/{c}" for n, c, _ in BUILDS]
  proc = subprocess.run([sys.executable, "-c", code, built["cli"], *names], cwd="/",
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, PYTHONPATH=""))
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got["vggss/default:test"] == ["v0", "v1"] and got["flickr_soundnet/10k:test"] == ["t0", "t1"]
  assert len(got["folder/default:train"]) == 10 and got["folder/default:test"] == ["ann00", "ann01"]
  assert len(got["vggsound/full:train"]) == 9 and len(got["vggsound/full:validation"]) == 1


def test_bad_media_stop_the_build_naming_the_file_or_are_skipped_and_counted(tmp_path):
  manual = tmp_path / "m"
  for i in range(4):
    mf.write_image(str(manual / f"x{i}.jpg") if manual.exists() else (
        os.makedirs(manual) or str(manual / f"x{i}.jpg")), seed=i)
    mf.write_pcm_wav(str(manual / f"x{i}.wav"), mf.train_pcm(i))
  bad = mf.write_corrupt(str(manual / "x2.wav"))
  folder = _builder_class("folder")
  with pytest.raises(DatasetError, match=f"{bad}: cannot be opened.*example 'x2'.*skip_bad"):
    b = folder(config=builder_lib.RealDataConfig(name="w2", num_workers=2),
               data_dir=str(tmp_path / "d1"), file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  b = _api_build("folder", builder_lib.RealDataConfig(name="skip", skip_bad=True, num_workers=1),
                 str(manual), str(tmp_path / "d2"))
  meta = b.info.metadata
  assert [s["id"] for s in meta["skipped"]] == ["x2"] and bad in meta["skipped"][0]["error"]
  ids = set(_by_id(b.as_data_source()["train"])) | set(_by_id(b.as_data_source()["validation"]))
  assert ids == {"x0", "x1", "x3"}
  reread = tfds.builder_from_directory(b.data_dir).info.metadata["skipped"]
  assert [s["id"] for s in reread] == ["x2"]
  os.remove(manual / "x1.wav")
  with pytest.raises(DatasetError, match=r"x1.jpg: no sound file x1\.wav.*Expected layout: <id>.jpg"):
    _api_build("folder", "default", str(manual), str(tmp_path / "d3"))
  with pytest.raises(DatasetError, match=r"no training list flickr_20k.txt.*Expected layout: frames/"):
    _api_build("flickr_soundnet", "20k", str(manual), str(tmp_path / "d4"))


def test_training_checks_the_recorded_front_end(built):
  from soundloc_jax.configs import default
  assert builder_lib.DEFAULT_AUDIO == default.LVS_AUDIO
  config = ml_collections.ConfigDict({"audio": default.audio_config(default.LVS_AUDIO)})
  data.check_audio_matches("vggsound/full", built["api"], config)
  config.audio.noverlap = 274
  with pytest.raises(DatasetError, match="differs in noverlap"):
    data.check_audio_matches("vggsound/full", built["api"], config)


def test_music_synthetic_grids_use_the_1s_front_end(built):
  train = _by_id(_source(built["api"], "music_synthetic", "train"))
  assert len(train) == 9 and all(i.startswith("train") for i in train)
  ex = next(iter(train.values()))
  assert ex["spectrogram"].shape == (257, 98) and ex["image"].shape == (246, 246, 3)


@pytest.mark.parametrize("method,arg", [
    ("iterative", "flickr_10k"), ("iterative", "flickr_20k"), ("iterative", "music_synthetic"),
    ("iterative", "flickr_10k,ablation=itr_intra"),
    ("hard_positive", "vggsound_144k,neighbours=random"), ("hard_positive", "flickr_144k"),
    ("lvs", "vggsound_144k,variant=vanilla"), ("lvs", "flickr_144k"), ("ezvsl", "flickr_144k")])
def test_presets_match_their_builders_and_fail_clearly_without_data(tmp_path, method, arg):
  from soundloc_jax.configs import datasets
  from soundloc_jax import audio, train
  config = importlib.import_module(f"soundloc_jax.configs.{method}").get_config(arg)
  preset = arg.split(",")[0]
  assert config.dataset.name == datasets.PRESETS[preset]["dataset"]
  assert config.batch_size == datasets.PRESETS[preset]["batch_size"]
  base, _, builder_config = config.dataset.name.partition("/")
  configs = {c.name: c for c in _builder_class(base).BUILDER_CONFIGS}
  recorded = configs[builder_config or "default"].audio
  assert audio.params_dict(recorded) == audio.params_dict(config.audio)
  for entry in config.dataset.test_splits:
    other = entry.split(":")[0] if ":" in entry else base
    assert os.path.isdir(os.path.join(REPO, "data_builders", other.split("/")[0])), entry
  assert (config.dataset.image_size, config.eval.size, config.model.width) == (224, 224, 64)
  assert config.eval.protocol == "median" and config.dataset.augment
  # Unannotated validation split: model selection by retrieval, not a box metric.
  assert config.checkpoint.best_metric == "val_r1"
  config.dataset.data_dir = str(tmp_path / "no_data")
  flag = f" --config={builder_config}" if builder_config else ""
  with pytest.raises(DatasetError, match=f"tfds_build data_builders/{base}{flag} --data_dir="):
    train.train_and_evaluate(config, str(tmp_path / "work"))
  with pytest.raises(ValueError, match="unknown dataset preset 'flickr_1k'"):
    datasets.apply_preset(config, "flickr_1k")


def test_split_evaluator_scores_a_real_test_split_with_its_gt_format_and_eval_audio(built):
  """SplitEvaluator reads gt_format from the split's metadata, builds gt maps by
  the official rule and feeds the LVS test spectrogram when eval.audio asks."""
  from soundloc_jax.configs import default
  config = default.get_config()
  config.dataset.image_size = config.eval.size = 224
  config.eval.protocol, config.eval.audio, config.eval.batch_size = "median", "lvs_test", 2
  source = _source(built["api"], "vggss", "test")
  truth = {it["file"]: it["bbox"] for it in built["truth"]["vgg"]["annotations"]}
  seen = []

  def predict(image, spectrogram):
    seen.append((image.shape, spectrogram.shape))
    # Responses shaped like each sample's own gt map (at 14x14).
    return np.stack([annotations.vggss_gt_map(truth[source[i]["id"].decode()], 14)
                     for i in range(2)])

  result = evaluators.SplitEvaluator("vggss:test", source, config).run(predict)
  assert seen == [((2, 224, 224, 3), (2, 257, 671))]
  assert result.ids == ["v0", "v1"] and result.metrics["n"] == 2
  for i, ident in enumerate(result.ids):
    np.testing.assert_array_equal(result.gt_maps[i], annotations.vggss_gt_map(truth[ident], 224))
  expected = protocol.score_maps(result.responses, result.gt_maps, protocol="median", size=224)
  np.testing.assert_allclose(result.cious, expected)


@pytest.mark.skipif(importlib.util.find_spec("apache_beam") is None,
                    reason="apache_beam is not installed (the [beam] extra; .ci/run tests it)")
def test_beam_build_equals_the_local_build(tmp_path):
  from apache_beam.options.pipeline_options import PipelineOptions
  manual = str(tmp_path / "m")
  mf.folder_layout(manual, n_train=4)
  local = _api_build("folder", builder_lib.RealDataConfig(name="local", num_workers=1), manual,
                     str(tmp_path / "d"))
  beam_builder = _builder_class("folder")(config=builder_lib.RealDataConfig(name="beam", beam=True),
                                          data_dir=str(tmp_path / "d"), file_format="array_record")
  beam_builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual, beam_options=PipelineOptions(["--runner=DirectRunner"])))
  for split in ("train", "validation", "test"):
    want, got = _by_id(local.as_data_source()[split]), _by_id(beam_builder.as_data_source()[split])
    assert sorted(want) == sorted(got) and want, split
    for ident, ex in want.items():
      for key, value in ex.items():
        np.testing.assert_array_equal(got[ident][key], value, err_msg=f"{split} {ident} {key}")


def test_id_lists_and_vggsound_csv_are_parsed(tmp_path):
  from soundloc_jax.data_builders.vggsound import vggsound_dataset_builder as vggsound
  lst = tmp_path / "list.txt"
  lst.write_text("id\n# a comment\n123.jpg\n456 # trailing comment\n\n123\n789,extra,columns\n")
  assert builder_lib.read_id_list(str(lst)) == ["123", "456", "789"]
  csv_path = tmp_path / "vggsound.csv"
  csv_path.write_text("---g-f_I2yQ,1,people marching,test\nabc,30,dog barking,train\n"
                      "x,y,z,train\nabc,40,\"a, b\",train\n")
  assert vggsound.csv_train_ids(str(csv_path)) == ["abc_000030", "abc_000040"]


def test_the_training_pipeline_reads_stored_frames_into_the_batch_contract(built):
  source = _source(built["api"], "flickr_soundnet/10k", "train")
  # As training opens it: the stored JPEG frames left encoded, decoded into the crops.
  encoded = data.open_source("flickr_soundnet/10k", "train", built["api"], encoded_images=True)
  assert isinstance(encoded[0]["image"], bytes)
  it, steps_per_epoch = input_pipeline.train_iterator(
      encoded, global_batch=4, seed=0, start_step=0, num_steps=1, image_size=224, augment=True)
  batch = next(it)
  assert steps_per_epoch == len(source) // 4
  assert batch["image"].shape == (4, 224, 224, 3) and batch["image"].dtype == np.uint8
  assert batch["flip"].shape == (4,) and batch["flip"].dtype == bool
  # The spectrogram as stored (float16); the step makes it float32.
  assert batch["spectrogram"].shape == (4, 257, 299) and batch["spectrogram"].dtype == np.float16
  np.testing.assert_array_equal(batch["spectrogram"][0],
                                source[int(batch["index"][0])]["spectrogram"])
  # A 224 crop of the stored 246-high frame (its flip and, for a JPEG, its
  # colour conversion are left to the device).
  i = int(batch["index"][0])
  stored = source[i]["image"]
  assert batch["ycbcr"].dtype == bool and batch["ycbcr"].all()  # JFIF frames, decoded as YCbCr
  crop = np.asarray(input_pipeline.device_inputs({k: batch[k][:1] for k in (
      "image", "spectrogram", "ycbcr")})[0][0])
  windows = (stored[top:top + 224, left:left + 224] for top in range(stored.shape[0] - 223)
             for left in range(stored.shape[1] - 223))
  assert any(np.array_equal(crop, w) for w in windows)


def test_eval_audio_must_be_known_and_needs_a_stored_waveform(built):
  from soundloc_jax.errors import ConfigError
  test = _source(built["api"], "vggss", "test")
  train = _source(built["api"], "vggsound/full", "train")
  with pytest.raises(ConfigError, match="eval.audio 'lvs'"):
    next(input_pipeline.eval_batches(test, batch_size=2, image_size=224, eval_audio="lvs"))
  with pytest.raises(DatasetError, match="needs the stored test 'waveform'"):
    next(input_pipeline.eval_batches(train, batch_size=2, image_size=224, eval_audio="lvs_test"))


def _folder_example(folder, ident, seed, boxes=None):
  os.makedirs(folder, exist_ok=True)
  mf.write_image(os.path.join(folder, f"{ident}.jpg"), h=40, w=60, seed=seed)
  mf.write_pcm_wav(os.path.join(folder, f"{ident}.wav"), mf.train_pcm(seed, seconds=1.0))
  if boxes is not None:
    with open(os.path.join(folder, f"{ident}.json"), "w") as f:
      json.dump({"boxes": boxes}, f)


def _one_worker_build(manual, data_dir):
  return _api_build("folder", builder_lib.RealDataConfig(name="sub", num_workers=1), str(manual),
                    str(data_dir))


def test_folder_test_subfolders_are_annotated_splits_and_train_holds_boxed_training_examples(tmp_path):
  """test/ and test_<name>/ become annotated splits of that name, train/
  adds training examples whose .json is not read, other folders are ignored,
  and the flat layout keeps working beside them."""
  m = tmp_path / "m"
  for i in range(4):
    _folder_example(m, f"flat{i}", i)
  _folder_example(m / "train", "tr0", 10, boxes=[[1, 2, 30, 20]])
  _folder_example(m / "train", "tr1", 11)
  _folder_example(m / "test", "a0", 20, boxes=[[0, 0, 30, 40]])
  _folder_example(m / "test", "a1", 21, boxes=[[30, 0, 60, 40]])
  _folder_example(m / "test_unseen", "u0", 22, boxes=[[15, 10, 45, 30]])
  _folder_example(m / "extras", "x0", 23)                       # not a split folder: ignored
  b = _one_worker_build(m, tmp_path / "d")
  src = b.as_data_source()
  assert set(src) == {"train", "validation", "test", "test_unseen"}
  train, val = _by_id(src["train"]), _by_id(src["validation"])
  assert sorted(set(train) | set(val)) == ["flat0", "flat1", "flat2", "flat3", "tr0", "tr1"]
  assert all(ex["gt_boxes"].shape == (0, 4) for ex in list(train.values()) + list(val.values()))
  test, unseen = _by_id(src["test"]), _by_id(src["test_unseen"])
  assert sorted(test) == ["a0", "a1"] and sorted(unseen) == ["u0"]
  # 40x60 -> 224x336 (x 5.6), centre crop from x = 56: [15, 10, 45, 30] -> [28, 56, 196, 168].
  np.testing.assert_allclose(unseen["u0"]["gt_boxes"], [[28, 56, 196, 168]], atol=1e-4)
  assert unseen["u0"]["image"].shape == (224, 224, 3) and unseen["u0"]["waveform"].size == 16000
  assert b.info.metadata["gt_format"] == "pixels"


def test_folder_from_annotated_examples_alone_and_layout_errors(tmp_path):
  """A folder of annotated examples only builds once the training ones are
  in train/; without them, and for the other layout mistakes, one line says
  what to do."""
  m = tmp_path / "m"
  for i in range(3):
    _folder_example(m, f"a{i}", i, boxes=[[0, 0, 20, 20]])
  with pytest.raises(DatasetError) as e:
    _one_worker_build(m, tmp_path / "d0")
  assert "\n" not in str(e.value)
  assert f"no training example (every example has an <id>.json" in str(e.value)
  assert f"{m / 'train'}/" in str(e.value)
  for i in range(3):
    _folder_example(m / "train", f"t{i}", 10 + i, boxes=[[5, 5, 25, 25]])
  b = _one_worker_build(m, tmp_path / "d1")
  src = b.as_data_source()
  assert sorted(_by_id(src["test"])) == ["a0", "a1", "a2"]
  assert sorted(set(_by_id(src["train"])) | set(_by_id(src["validation"]))) == ["t0", "t1", "t2"]

  _folder_example(m / "test", "b0", 20, boxes=[[0, 0, 10, 10]])
  with pytest.raises(DatasetError, match=r"both in manual_dir itself and in .*test/ \(two sources"):
    _one_worker_build(m, tmp_path / "d2")
  for i in range(3):
    for ext in (".jpg", ".wav", ".json"):
      os.remove(m / f"a{i}{ext}")
  _folder_example(m / "test_unseen", "b0", 21, boxes=[[0, 0, 10, 10]])
  with pytest.raises(DatasetError, match=r"id 'b0' twice \(.*test/b0.wav and .*test_unseen/b0.wav\)"):
    _one_worker_build(m, tmp_path / "d3")
  os.remove(m / "test_unseen" / "b0.json")
  os.rename(m / "test_unseen" / "b0.wav", m / "test_unseen" / "c0.wav")
  os.rename(m / "test_unseen" / "b0.jpg", m / "test_unseen" / "c0.jpg")
  with pytest.raises(DatasetError, match=r"test_unseen/c0.wav: no c0.json next to it \(every "
                                         r"example in test_unseen/ is annotated\)"):
    _one_worker_build(m, tmp_path / "d4")


def test_a_bare_name_reads_the_recorded_config_for_the_whole_run(tmp_path, caplog):
  """TFDS reads a bare dataset name as the default config that the last build
  of *any* config recorded. `data.explicit_config` names the config once per
  run (so a variant built mid-run cannot switch the test splits), logs which
  one is read when several are built, and refuses to guess when none is
  recorded."""
  root = tmp_path / "ds"

  def record(default):
    os.makedirs(root / ".config", exist_ok=True)
    with open(root / ".config" / "metadata.json", "w") as f:
      json.dump({"default_config_name": default}, f)

  assert data.explicit_config("ds", str(tmp_path)) == "ds"  # not built: open_source explains
  os.makedirs(root / "default" / "1.0.0")
  record("default")
  assert data.explicit_config("ds", str(tmp_path)) == "ds/default"
  assert "configs" not in caplog.text
  os.makedirs(root / "px128" / "1.0.0")
  assert data.explicit_config("ds", str(tmp_path)) == "ds/default"
  assert "default, px128" in caplog.text and "reading ds/default" in caplog.text
  record("px128")  # what a variant build recorded before the stamps builder kept `default`
  assert data.explicit_config("ds", str(tmp_path)) == "ds/px128"
  assert data.explicit_config("ds/default", str(tmp_path)) == "ds/default"
  record("gone")
  with pytest.raises(DatasetError, match=r"'ds' has configs default, px128 .*--config\.dataset\.name=ds/default"):
    data.explicit_config("ds", str(tmp_path))
  os.makedirs(tmp_path / "flat" / "1.0.0")  # a builder without configs: the name as given
  assert data.explicit_config("flat", str(tmp_path)) == "flat"
