"""Tests for the embedded demo dataset `av_digits` and `soundloc_jax.tfds_build`.

The dataset is built twice into temporary data_dirs with reduced split sizes
(config `small_320_20_200`; the full build is 4000/500/500 and lives under
config `full`): once with the command line (`python -m soundloc_jax.tfds_build`
with `SOUNDLOC_AV_DIGITS_SIZES` set, as a user would) and once with the Python
API (`demo_data.ensure_built`). Reading uses `tfds.data_source` (array_record,
no TensorFlow), including from a fresh process that never imports the builder.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"train": 320, "validation": 20, "test": 200}
SIZES_ENV_VALUE = ",".join(str(SIZES[s]) for s in ("train", "validation", "test"))
CONFIG = "small_320_20_200"
NAME = f"av_digits/{CONFIG}"
SPLITS = ("train", "validation", "test")


def _env(**extra):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p])
  env.update(extra)
  return env


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("av_digits_cli"))
  proc = subprocess.run(
      [sys.executable, "-m", "soundloc_jax.tfds_build", "data_builders/av_digits",
       f"--data_dir={data_dir}"],
      cwd=REPO, env=_env(SOUNDLOC_AV_DIGITS_SIZES=SIZES_ENV_VALUE),
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return data_dir


@pytest.fixture(scope="module")
def api_dir(tmp_path_factory):
  from soundloc_jax import demo_data
  data_dir = str(tmp_path_factory.mktemp("av_digits_api"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("SOUNDLOC_AV_DIGITS_SIZES", SIZES_ENV_VALUE)
    assert demo_data.dataset_name() == NAME
    demo_data.ensure_built(data_dir)  # bare "av_digits": config from the env var
  return data_dir


@pytest.fixture(scope="module")
def data(api_dir):
  """All examples of the API build, per split, as dicts of numpy values."""
  import tensorflow_datasets as tfds
  out = {}
  for split in SPLITS:
    src = tfds.data_source(NAME, split=split, data_dir=api_dir)
    out[split] = [src[i] for i in range(len(src))]
  return out


def _builder_module():
  from soundloc_jax.data_builders.av_digits import av_digits_dataset_builder
  return av_digits_dataset_builder


def _ciou(pred, gt):
  pred = np.asarray(pred, np.float64)
  gt = np.asarray(gt, np.float64)
  return float(np.sum(pred * gt) / (np.sum(gt) + np.sum(pred * (gt == 0))))


def _gt_map(box, size=64):
  x0, y0, x1, y1 = (int(v) for v in box)
  gt = np.zeros((size, size), np.float32)
  gt[y0:y1, x0:x1] = 1
  return gt


# ---------------------------------------------------------------------------
# Building and reading.


def test_cli_and_api_builds_hold_identical_examples(cli_dir, api_dir):
  """Same records in the same order, byte for byte once the protobuf map of
  features is serialized deterministically. (The files themselves differ
  between processes: protobuf writes a map's entries in hash order.)"""
  from array_record.python import array_record_module
  from tensorflow_datasets.proto import tf_example_pb2
  rel = os.path.join("av_digits", CONFIG, "1.0.0")
  for split in SPLITS:
    name = f"av_digits-{split}.array_record-00000-of-00001"
    records = []
    for d in (cli_dir, api_dir):
      reader = array_record_module.ArrayRecordReader(os.path.join(d, rel, name))
      records.append(reader.read_all())
      reader.close()
    assert len(records[0]) == len(records[1]) == SIZES[split]
    for a, b in zip(*records):
      ea, eb = tf_example_pb2.Example(), tf_example_pb2.Example()
      ea.ParseFromString(a)
      eb.ParseFromString(b)
      assert ea.SerializeToString(deterministic=True) == eb.SerializeToString(deterministic=True)
  with open(os.path.join(cli_dir, rel, "features.json")) as f1, \
       open(os.path.join(api_dir, rel, "features.json")) as f2:
    assert json.load(f1) == json.load(f2)


def test_cli_file_format_defaults_to_array_record(cli_dir):
  import tensorflow_datasets as tfds
  builder = tfds.builder_from_directory(os.path.join(cli_dir, "av_digits", CONFIG, "1.0.0"))
  assert getattr(builder.info.file_format, "value", builder.info.file_format) == "array_record"
  assert {s: builder.info.splits[s].num_examples for s in SPLITS} == SIZES


def test_fresh_process_reads_without_builder_code_or_tensorflow(cli_dir):
  code = (
      "import sys, json, tensorflow_datasets as tfds\n"
      f"src = tfds.data_source('av_digits', split='test', data_dir={cli_dir!r})\n"
      "ex = src[3]\n"
      "b = tfds.builder_from_directory("
      f"{os.path.join(cli_dir, 'av_digits', CONFIG, '1.0.0')!r})\n"
      "print(json.dumps(dict(n=len(src), id=ex['id'].decode(), label=int(ex['label']),\n"
      "  meta=dict(b.info.metadata),\n"
      "  mods=[m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'data_builders',\n"
      "        'av_digits', 'soundloc_jax', 'librosa')])))\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd="/", env=_env(SOUNDLOC_AV_DIGITS_SIZES=""),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-5000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got["n"] == SIZES["test"]
  assert got["id"].startswith("test_")
  assert got["label"] == _builder_module().make_example("test", int(got["id"][5:]))["label"]
  assert got["mods"] == []
  m = _builder_module()
  assert got["meta"]["audio"] == m.DEMO_AUDIO
  assert got["meta"]["image_size"] == 64 and got["meta"]["grid"] == 2
  assert got["meta"]["sizes"] == SIZES


def test_ensure_built_is_a_no_op_when_present(api_dir, capsys):
  from soundloc_jax import demo_data
  capsys.readouterr()
  demo_data.ensure_built(api_dir, name=NAME)
  captured = capsys.readouterr()
  assert "building" not in captured.err + captured.out


def test_metadata_matches_front_end(api_dir):
  import tensorflow_datasets as tfds
  from soundloc_jax import audio
  m = _builder_module()
  info = tfds.builder(NAME, data_dir=api_dir).info
  assert dict(info.metadata["audio"]) == audio.params_dict(m.DEMO_AUDIO)
  assert audio.spectrogram_shape(info.metadata["audio"]) == m.SPEC_SHAPE == (64, 63)


def test_config_names_and_env_parsing(monkeypatch):
  from soundloc_jax import demo_data
  m = _builder_module()
  assert m.config_from_name("full").sizes == m.FULL_SIZES
  assert m.FULL_SIZES == {"train": 4000, "validation": 500, "test": 500}
  assert m.config_from_name("small_40_10_10").sizes == {"train": 40, "validation": 10, "test": 10}
  monkeypatch.delenv("SOUNDLOC_AV_DIGITS_SIZES", raising=False)
  assert demo_data.dataset_name() == "av_digits/full"
  monkeypatch.setenv("SOUNDLOC_AV_DIGITS_SIZES", "4000,500,500")
  assert demo_data.dataset_name() == "av_digits/full"
  monkeypatch.setenv("SOUNDLOC_AV_DIGITS_SIZES", "40,10,10")
  assert demo_data.dataset_name() == "av_digits/small_40_10_10"
  monkeypatch.setenv("SOUNDLOC_AV_DIGITS_SIZES", "40,10")
  with pytest.raises(ValueError):
    demo_data.dataset_name()
  with pytest.raises(ValueError):
    m.config_from_name("small_1_2")
  monkeypatch.setenv("SOUNDLOC_DATA_DIR", "/some/where")
  assert demo_data.default_data_dir() == "/some/where"
  monkeypatch.delenv("SOUNDLOC_DATA_DIR")
  assert demo_data.default_data_dir() == os.path.expanduser("~/tensorflow_datasets")


# ---------------------------------------------------------------------------
# Content.


def test_shapes_dtypes_and_ids(data):
  ids = []
  for split in SPLITS:
    assert len(data[split]) == SIZES[split]
    for i, ex in enumerate(data[split]):
      assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
      assert ex["spectrogram"].shape == (64, 63) and ex["spectrogram"].dtype == np.float16
      assert np.all(np.isfinite(ex["spectrogram"]))
      assert ex["box"].shape == (4,) and ex["box"].dtype == np.float32
      assert ex["present"].shape == (4,) and ex["present"].dtype == np.int64
      assert 0 <= int(ex["label"]) < 10
      ids.append(ex["id"].decode())
    # Example order on disk is TFDS's (hashed keys); ids name every index once.
    assert sorted(ex["id"].decode() for ex in data[split]) == [
        f"{split}_{i:06d}" for i in range(SIZES[split])]
  assert len(set(ids)) == len(ids)


def test_boxes_cells_and_present(data):
  m = _builder_module()
  for split in SPLITS:
    for ex in data[split]:
      box = ex["box"]
      label = int(ex["label"])
      present = ex["present"]
      assert np.all(box % 16 == 0), box
      assert box[2] - box[0] == 32 and box[3] - box[1] == 32, box
      cell = int(box[1] // 32) * 2 + int(box[0] // 32)
      np.testing.assert_array_equal(box, m.cell_box(cell))
      assert present[cell] == label
      classes = present[present >= 0]
      assert 2 <= len(classes) <= 4
      assert len(set(classes.tolist())) == len(classes)
      assert np.all(present >= -1) and np.all(present < 10)
      img = ex["image"]
      for c in range(4):
        x0, y0, x1, y1 = (int(v) for v in m.cell_box(c))
        patch = img[y0:y1, x0:x1]
        if present[c] < 0:
          assert patch.max() <= m.BACKGROUND_MAX  # noise only
        else:
          assert patch.max() >= 150  # a bright digit
      assert img.min() >= 0 and img.mean() > 5  # noisy background, not black


def test_examples_independent_of_generation_order(data):
  """An example regenerated alone equals the stored one (per-example RNG)."""
  m = _builder_module()
  for split, idx in (("train", 7), ("test", 123), ("validation", 19)):
    stored = next(ex for ex in data[split] if ex["id"].decode() == f"{split}_{idx:06d}")
    fresh = m.make_example(split, idx)
    for key in ("image", "spectrogram", "box", "present"):
      np.testing.assert_array_equal(stored[key], fresh[key])
    assert int(stored["label"]) == fresh["label"]


def test_digit_partition_and_source(data):
  m = _builder_module()
  parts = {s: m.digit_indices(s) for s in SPLITS}
  for k in range(10):
    sets = [set(parts[s][k].tolist()) for s in SPLITS]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert len(sets[0]) > 2 * len(sets[2]) > 0
  # The fast reader of the bundled file is exactly sklearn's load_digits().
  from sklearn.datasets import load_digits
  d = load_digits()
  images, targets = m._load_digits_fast()
  np.testing.assert_array_equal(images, d.images)
  np.testing.assert_array_equal(targets, d.target)


def test_oracle_maps(data):
  """A box-shaped map scores cIoU 1; the 4x4 (stride-16) oracle after upsampling
  reproduces the box exactly with nearest neighbour, and to 1001/1024 with
  bilinear (half-pixel centres) + threshold 0.5: never outside the box, exact on
  every edge, 23 pixels short at the corner pointing into the image centre."""
  import jax
  import jax.numpy as jnp
  boxes = {tuple(ex["box"].tolist()) for ex in data["test"]}
  assert len(boxes) == 4  # every cell occurs
  for box in boxes:
    gt = _gt_map(box)
    assert _ciou(gt, gt) == 1.0
    feat = np.zeros((4, 4), np.float32)
    x0, y0, x1, y1 = (int(v) // 16 for v in box)
    feat[y0:y1, x0:x1] = 1.0
    assert feat.sum() == 4
    nearest = np.kron(feat, np.ones((16, 16), np.float32))
    assert _ciou(nearest, gt) == 1.0
    up = np.asarray(jax.image.resize(jnp.asarray(feat), (64, 64), "bilinear"))
    pred = (up > 0.5).astype(np.float32)
    assert np.all(pred <= gt)  # nothing outside the box
    assert int(gt.sum() - pred.sum()) == 23
    assert _ciou(pred, gt) == pytest.approx(1001 / 1024)
    # Every box edge row/column away from the inner corner is exact.
    bx0, by0, bx1, by1 = (int(v) for v in box)
    assert pred[by0:by1, bx0:bx1][8:-8, :].all() and pred[by0:by1, bx0:bx1][:, 8:-8].all()


def test_sound_identifies_the_class(data):
  def features(split):
    x = np.stack([ex["spectrogram"].astype(np.float32).mean(axis=1) for ex in data[split]])
    y = np.array([int(ex["label"]) for ex in data[split]])
    return x, y

  x_train, y_train = features("train")
  x_test, y_test = features("test")
  assert set(y_train.tolist()) == set(range(10))
  means = np.stack([x_train[y_train == k].mean(axis=0) for k in range(10)])
  pred = np.argmin(((x_test[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
  accuracy = float(np.mean(pred == y_test))
  assert accuracy > 0.8, accuracy
  # ... but not trivially: samples of one class differ.
  for k in range(10):
    specs = [ex["spectrogram"].astype(np.float32) for ex in data["train"] if int(ex["label"]) == k]
    assert len(specs) >= 2
    assert np.abs(specs[0] - specs[1]).max() > 0.1
    assert np.abs(specs[0].mean(1) - specs[1].mean(1)).max() > 0.01
