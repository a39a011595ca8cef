"""The `stamps` benchmark builder on a tiny fake tuxpaint-stamps package.

No tuxpaint package is needed: `fake_package` writes a package tree with
flat-colour RGBA stamps (transparent margins) and pure-tone sound effects,
one frequency per stamp, so every test can check the stored data against the
files independently of the builder's code: boxes against the stamp files
re-pasted with PIL, sounds against the tones' frequency bands. It holds two
stamps whose (differently named) files hold the same recording, one excluded
name (`owl`, with its own sound), a spoken description (`*_desc_*`) and an SVG
that must be ignored, and silent-only stamps.
"""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from soundloc_jax import audio, data
from soundloc_jax.evaluation import annotations, evaluators, objects, protocol
from soundloc_jax.errors import DatasetError
from tests import media_fixtures as mf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 16000
SIZE = 64
AUDIO = dict(kind="log_mel", sample_rate=RATE, clip_seconds=0.5, n_fft=512, hop_length=160, n_mels=64)
SIZES = {"train": 30, "validation": 8, "test": 12, "test_unseen": 12, "test_offscreen": 12,
         "test_unseen_offscreen": 12}
VERSION = "2099.01.02-3"

# stamp path -> (RGB colour, canvas (w, h), opaque box (x0, y0, x1, y1), tone Hz or None)
STAMPS = {
    "things/alpha.png": ((230, 20, 20), (50, 40), (5, 8, 45, 30), 300.0),
    "things/beta.png": ((20, 200, 20), (30, 60), (4, 3, 26, 57), 700.0),
    "things/gamma.png": ((20, 20, 230), (44, 44), (10, 10, 40, 34), 1500.0),
    "critters/delta.png": ((230, 230, 20), (60, 30), (2, 2, 58, 26), 3200.0),
    "critters/epsilon.png": ((20, 220, 220), (36, 36), (6, 4, 30, 32), 5000.0),
    "critters/moo.png": ((230, 120, 20), (40, 50), (3, 5, 37, 45), 1000.0),     # shares ...
    "farm/lowing.png": ((120, 20, 230), (50, 40), (8, 4, 46, 36), 1000.0),      # ... one recording
    "critters/owl.png": ((250, 250, 250), (40, 40), (5, 5, 35, 35), 2400.0),    # excluded name
    "shapes/square.png": ((10, 10, 10), (30, 30), (2, 2, 28, 28), None),
    "shapes/ring.png": ((160, 160, 160), (40, 30), (5, 5, 35, 25), None),
    "shapes/bar.png": ((120, 60, 20), (60, 20), (2, 4, 58, 16), None),
}
TONE_GROUPS = {"alpha": 300.0, "beta": 700.0, "gamma": 1500.0, "delta": 3200.0, "epsilon": 5000.0,
               "lowing+moo": 1000.0}


def _write_stamp(path, colour, canvas, box):
  from PIL import Image
  rgba = np.zeros((canvas[1], canvas[0], 4), np.uint8)
  x0, y0, x1, y1 = box
  rgba[y0:y1, x0:x1, :3] = colour
  rgba[y0:y1, x0:x1, 3] = 255
  rgba[y0 + 2:y1 - 2, x0, 3] = 128  # a half-transparent edge column
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(rgba, "RGBA").save(path)


def make_fake_package(root) -> str:
  """The `dpkg-deb -x` tree of a tiny fake package under `root`; returns root."""
  stamps = os.path.join(root, "usr", "share", "tuxpaint", "stamps")
  for rel, (colour, canvas, box, tone) in STAMPS.items():
    path = os.path.join(stamps, rel)
    _write_stamp(path, colour, canvas, box)
    stem = os.path.splitext(path)[0]
    if tone is None:
      continue
    seconds = 1.3 if "delta" not in rel else 0.3        # one recording shorter than a clip
    wave = mf.tone(seconds, RATE, tone, amp=0.4)
    if rel == "farm/lowing.png":                        # the same recording, delayed and quieter
      wave = np.concatenate([np.zeros(1600, np.float32), 0.5 * mf.tone(1.3, RATE, tone, amp=0.4)])
    mf.write_audio(stem + (".flac" if "beta" in rel else ".wav"), wave, RATE)
  mf.write_audio(os.path.join(stamps, "things", "alpha_desc_fr.wav"), mf.tone(1.0, RATE, 6000.0), RATE)
  with open(os.path.join(stamps, "things", "alpha.dat"), "w") as f:
    f.write("nomirror\n")
  with open(os.path.join(stamps, "shapes", "drawing.svg"), "w") as f:
    f.write("<svg/>")
  doc = os.path.join(root, "usr", "share", "doc", "tuxpaint-stamps-default")
  os.makedirs(doc, exist_ok=True)
  with gzip.open(os.path.join(doc, "changelog.Debian.gz"), "wt") as f:
    f.write(f"tuxpaint-stamps ({VERSION}) unstable; urgency=medium\n\n  * Fake.\n")
  return root


def _builder_module():
  from soundloc_jax.data_builders.stamps import stamps_dataset_builder
  return stamps_dataset_builder


def _config(name="fake", **fields):
  sb = _builder_module()
  fields = {"image_size": SIZE, "audio": dict(AUDIO), "sizes": dict(SIZES), **fields}
  return sb.StampsConfig(name=name, **fields)


def _build(manual_dir, data_dir, **fields):
  builder = _builder_module().Builder(config=_config(**fields), data_dir=str(data_dir),
                                      file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _examples(builder, split):
  source = builder.as_data_source()[split]
  out = {}
  for i in range(len(source)):
    ex = dict(source[i])
    for key in ("id", "group", "silent_groups", "scene"):
      ex[key] = ex[key].decode()
    ex["scene"] = json.loads(ex["scene"])
    out[ex["id"]] = ex
  return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("stamps")
  manual = make_fake_package(str(root / "pkg"))
  builder = _build(manual, root / "data", num_workers=1)
  return {"manual": manual, "root": root, "builder": builder,
          "splits": {s: _examples(builder, s) for s in SIZES}}


def _group_of(path):
  stem = os.path.splitext(os.path.basename(path))[0]
  return "lowing+moo" if stem in ("moo", "lowing") else stem


def _scene_groups(ex):
  scene = ex["scene"]
  return ({o["group"] for o in scene["objects"]}
          | {_group_of(p) for p in scene["background"]["stamps"]})


# ----------------------------------------------------------------------------


def test_two_builds_are_identical_whatever_the_worker_count(built, tmp_path):
  """Determinism from the seed: a second build on 2 worker processes holds
  exactly the examples of the first (1 worker, in process); another seed
  gives other examples."""
  other = _build(built["manual"], tmp_path / "again", num_workers=2)
  for split, first in built["splits"].items():
    second = _examples(other, split)
    assert sorted(second) == sorted(first) == [f"{split}_{i:06d}" for i in range(SIZES[split])]
    for ident, ex in first.items():
      for key, value in ex.items():
        if key == "scene":
          assert second[ident][key] == value, (split, ident)
        else:
          np.testing.assert_array_equal(second[ident][key], value, err_msg=f"{split} {ident} {key}")
  reseeded = _build(built["manual"], tmp_path / "reseeded", seed=1, sizes={"train": 5})
  assert all(not np.array_equal(a["image"], built["splits"]["train"][k]["image"])
             for k, a in _examples(reseeded, "train").items())


def test_the_command_line_builds_from_the_folder_and_names_a_wrong_manual_dir(built, tmp_path):
  """`python -m soundloc_jax.tfds_build data_builders/stamps` (the README's
  command; here a small variant named in the environment, 3 examples per
  split) builds what the API builds, and leaves `default` the config a bare
  `stamps` reads; a folder that is not the package fails in one line naming
  it."""
  env = dict(os.environ, PYTHONPATH=REPO, SOUNDLOC_BUILD_WORKERS="1",
             SOUNDLOC_STAMPS_CONFIG="px32_clip0.25s")
  cmd = [sys.executable, "-m", "soundloc_jax.tfds_build", "data_builders/stamps",
         "--max_examples_per_split=3"]
  os.makedirs(tmp_path / "cli" / "stamps" / "default" / "1.0.0")  # as if built before
  proc = subprocess.run(cmd + [f"--data_dir={tmp_path / 'cli'}", f"--manual_dir={built['manual']}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  cli = tfds.builder("stamps/px32_clip0.25s", data_dir=str(tmp_path / "cli"))
  assert data.built_configs("stamps", str(tmp_path / "cli")) == (["default", "px32_clip0.25s"],
                                                                 "default")
  sb = _builder_module()
  config = sb.config_from_name("px32_clip0.25s")
  assert config.image_size == 32 and config.audio["clip_seconds"] == 0.25
  assert cli.info.metadata["audio"] == audio.params_dict(config.audio)
  config.sizes = {"test": 3}
  api = sb.Builder(config=config, data_dir=str(tmp_path / "api"), file_format="array_record")
  api.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=built["manual"]))
  cli_test, api_test = _examples(cli, "test"), _examples(api, "test")
  for ident, ex in api_test.items():
    np.testing.assert_array_equal(cli_test[ident]["image"], ex["image"])
    np.testing.assert_array_equal(cli_test[ident]["spectrogram"], ex["spectrogram"])
  wrong = tmp_path / "wrong"
  os.makedirs(wrong / "usr")
  proc = subprocess.run(cmd + [f"--data_dir={tmp_path / 'cli2'}", f"--manual_dir={wrong}"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-3000:]
  assert str(wrong) in lines[0] and "apt-get download tuxpaint-stamps-default" in lines[0]


def test_splits_shapes_audio_and_metadata(built):
  b, splits = built["builder"], built["splits"]
  assert {s: len(v) for s, v in splits.items()} == SIZES
  meta = b.info.metadata
  assert meta["audio"] == audio.params_dict(AUDIO)
  assert meta["gt_format"] == f"pixels:{SIZE}" and meta["image_size"] == SIZE
  assert meta["package_version"] == VERSION and meta["seed"] == _builder_module().SEED
  groups = meta["groups"]
  assert sorted(groups["seen"] + groups["unseen"]) == sorted(TONE_GROUPS)  # owl is not there
  assert len(groups["unseen"]) == 1  # round(0.2 * 6)
  assert sorted(groups["silent_only"]) == ["bar", "ring", "square"]
  assert meta["package_scan"]["svg_skipped"] == 1
  spec_shape = audio.spectrogram_shape(AUDIO)
  for split, examples in splits.items():
    for ex in examples.values():
      assert ex["image"].shape == (SIZE, SIZE, 3) and ex["image"].dtype == np.uint8
      assert ex["spectrogram"].shape == spec_shape == (64, 51)
      assert ex["spectrogram"].dtype == np.float16
      if split.startswith("test"):
        # The stored spectrogram is the front end of the stored 16-bit mix.
        assert ex["waveform"].shape == (int(RATE * AUDIO["clip_seconds"]),)
        expected = audio.log_spectrogram(ex["waveform"].astype(np.float32) / 32768, RATE, AUDIO)
        if split in ("test", "test_unseen"):
          np.testing.assert_array_equal(ex["spectrogram"], expected.astype(np.float16))
        else:  # the builder's one-thread BLAS may round a value to the next float16
          np.testing.assert_allclose(ex["spectrogram"], expected, rtol=0, atol=1e-3)
      else:
        assert ex["waveform"].shape == (0,)


def test_validation_is_stored_without_boxes(built):
  for ex in built["splits"]["validation"].values():
    assert ex["gt_boxes"].shape == (0, 4) and ex["silent_boxes"].shape == (0, 4)
    for obj in ex["scene"]["objects"]:
      assert set(obj) == {"role", "group", "stamp"}
  for split in ("train", "test", "test_unseen"):
    for ex in built["splits"][split].values():
      assert ex["gt_boxes"].shape == (1, 4) and ex["silent_boxes"].shape[0] in (1, 2)
  # So the trainer validates it by retrieval alone (issue 14): its empty
  # gt_boxes are no annotation, although the metadata names a gt_format.
  sources = built["builder"].as_data_source()
  assert not annotations.source_is_annotated(sources["validation"])
  assert annotations.source_is_annotated(sources["test"])


def _pasted(manual, obj):
  """The object's RGBA as the documented transform makes it from the stamp
  file alone: crop to alpha > 0, bilinear to the recorded size, mirror."""
  from PIL import Image
  path = os.path.join(manual, "usr", "share", "tuxpaint", "stamps", obj["stamp"])
  with Image.open(path) as im:
    rgba = im.convert("RGBA")
  rgba = rgba.crop(rgba.getchannel("A").getbbox()).resize(tuple(obj["size"]),
                                                          Image.Resampling.BILINEAR)
  if obj["mirror"]:
    rgba = rgba.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(rgba)


def test_boxes_are_the_pasted_objects_alpha_boxes(built):
  """Each stored box is the bounding box of the object's pasted alpha >= 64,
  recomputed from the stamp file; the object really is there in the image
  (its flat colour where it is opaque and uncovered), and `alpha.dat` forbids
  mirroring alpha."""
  checked = 0
  for split in ("train", "test", "test_unseen"):
    for ex in built["splits"][split].values():
      objects = ex["scene"]["objects"]
      alphas = []
      for obj in objects:
        rgba = _pasted(built["manual"], obj)
        canvas = np.zeros((SIZE, SIZE), np.int32)
        x, y = obj["xy"]
        canvas[y:y + rgba.shape[0], x:x + rgba.shape[1]] = rgba[..., 3]
        alphas.append(canvas)
        ys, xs = np.nonzero(canvas >= 64)
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert obj["box"] == box
        if obj["stamp"] == "things/alpha.png":
          assert not obj["mirror"]
      np.testing.assert_array_equal(ex["gt_boxes"], [objects[0]["box"]])
      np.testing.assert_array_equal(ex["silent_boxes"], [o["box"] for o in objects[1:]])
      for k, obj in enumerate(objects):
        others = sum(a for j, a in enumerate(alphas) if j != k)
        visible = (alphas[k] == 255) & (others == 0)
        colour = np.asarray(STAMPS[obj["stamp"]][0], np.float64)
        if visible.sum() >= 20:
          diff = np.abs(ex["image"][visible].astype(np.float64) - colour).mean()
          assert diff < 8.0, (ex["id"], obj["stamp"], diff)
          checked += 1
  assert checked >= 60


def _band_energy(wave, freq):
  spectrum = np.abs(np.fft.rfft(wave.astype(np.float64))) ** 2
  f = np.fft.rfftfreq(wave.size, 1 / RATE)
  return spectrum[(f > 0.9 * freq) & (f < 1.1 * freq)].sum()


def test_the_mix_holds_the_sounding_group_and_never_a_silent_one(built):
  """The silent groups differ from the sounding one; the recording is the
  sounding group's; a distractor is a group nowhere in the image; in the
  stored mix the sounding tone's band dominates every silent group's band
  and the excluded owl's 2400 Hz never sounds."""
  recordings = built["builder"].info.metadata["group_recordings"]
  for split in ("train", "validation", "test", "test_unseen"):
    for ex in built["splits"][split].values():
      scene, group = ex["scene"], ex["group"]
      silent = ex["silent_groups"].split("|")
      assert group == scene["objects"][0]["group"] and group not in silent
      assert len(set(silent)) == len(silent) == len(scene["objects"]) - 1
      assert scene["audio"]["recording"] in recordings[group]
      assert "_desc" not in scene["audio"]["recording"]
      if scene["audio"]["distractor"]:
        assert scene["audio"]["distractor"]["group"] not in _scene_groups(ex)
      if split in ("test", "test_unseen"):
        sounding = _band_energy(ex["waveform"], TONE_GROUPS[group])
        for g in silent:
          if g in TONE_GROUPS:
            assert sounding > 5 * _band_energy(ex["waveform"], TONE_GROUPS[g]), (ex["id"], g)
        assert sounding > 5 * _band_energy(ex["waveform"], 2400.0)


def test_a_shared_recording_makes_one_group(built):
  """moo.wav and lowing.wav hold one recording (delayed, quieter): compared
  as decoded audio, they make `moo` and `lowing` one group."""
  meta = built["builder"].info.metadata
  assert sorted(meta["group_recordings"]["lowing+moo"]) == ["critters/moo.wav", "farm/lowing.wav"]
  pairs = meta["package_scan"]["duplicate_recordings"]
  assert [p[:2] for p in pairs] == [["critters/moo.wav", "farm/lowing.wav"]] and pairs[0][2] > 0.99
  stamps = {o["stamp"] for split in built["splits"].values() for ex in split.values()
            for o in ex["scene"]["objects"] if o["group"] == "lowing+moo"}
  assert stamps == {"critters/moo.png", "farm/lowing.png"}


def test_unseen_groups_never_appear_outside_test_unseen(built):
  unseen = set(built["builder"].info.metadata["groups"]["unseen"])
  for split in ("train", "validation", "test"):
    for ex in built["splits"][split].values():
      assert not _scene_groups(ex) & unseen, ex["id"]
      assert ex["scene"]["audio"]["distractor"] is None or (
          ex["scene"]["audio"]["distractor"]["group"] not in unseen)
  assert {ex["group"] for ex in built["splits"]["test_unseen"].values()} == unseen
  assert {ex["group"] for ex in built["splits"]["test"].values()} <= set(
      built["builder"].info.metadata["groups"]["seen"])


def test_named_unseen_groups_replace_the_draw():
  """`unseen_groups` fixes test_unseen whatever the seed; a name that is not a
  group that can sound, or holding out every such group, is refused by name.
  The `_kin` variants name the kin list."""
  import types
  from soundloc_jax.data_builders.stamps import generate
  catalog = types.SimpleNamespace(root="/pkg", sounding_groups=lambda: ["a", "b", "c", "d"],
                                  silent_only_groups=lambda: ["s"])
  for seed in (0, 1, 2):
    plan = generate.make_plan(catalog, seed, 0.5, unseen_groups=("d", "b"))
    assert (plan.unseen, plan.seen, plan.silent_only) == (("b", "d"), ("a", "c"), ("s",))
  drawn = {generate.make_plan(catalog, seed, 0.5).unseen for seed in range(8)}
  assert len(drawn) > 1  # without names the seed draws them
  with pytest.raises(DatasetError, match=r"\['s', 'x'\].*a, b, c, d"):
    generate.make_plan(catalog, 0, 0.5, unseen_groups=("a", "s", "x"))
  with pytest.raises(DatasetError, match="at least one must stay seen"):
    generate.make_plan(catalog, 0, 0.5, unseen_groups=("a", "b", "c", "d"))
  sb = _builder_module()
  kin = sb.config_from_name("px96_clip2s_kin")
  assert kin.name == "px96_clip2s_kin" and kin.unseen_groups == sb.KIN_UNSEEN
  assert kin.image_size == 96 and kin.audio["clip_seconds"] == 2.0
  assert sb.config_from_name("px96").unseen_groups == ()


def test_excluded_groups_never_appear_anywhere(built):
  meta = built["builder"].info.metadata
  assert meta["excluded"]["groups"] == {"owl": ["critters/owl.png"]}
  for split in built["splits"].values():
    for ex in split.values():
      text = json.dumps(ex["scene"])
      assert "owl" not in text, ex["id"]


def test_a_wrong_manual_dir_is_one_line_naming_it(tmp_path):
  empty = tmp_path / "not_the_package"
  os.makedirs(empty / "usr" / "share")
  (empty / "README").write_text("nothing here\n")
  for manual in (empty, tmp_path / "missing"):
    with pytest.raises(DatasetError) as e:
      _build(manual, tmp_path / "data")
    message = str(e.value)
    assert "\n" not in message and str(manual) in message
    assert "apt-get download tuxpaint-stamps-default && dpkg-deb -x" in message


def test_the_stamps_folder_itself_is_accepted(built, tmp_path):
  stamps_dir = os.path.join(built["manual"], "usr", "share", "tuxpaint", "stamps")
  b = _build(stamps_dir, tmp_path, sizes={"train": 3, "validation": 0, "test": 2,
                                           "test_unseen": 0})
  assert b.info.metadata["package_version"] == VERSION
  first = _examples(b, "train")["train_000001"]
  np.testing.assert_array_equal(first["image"], built["splits"]["train"]["train_000001"]["image"])


def test_the_project_evaluator_scores_the_test_splits(built):
  """SplitEvaluator reads `pixels:S` boxes with no stamps-specific code: the
  oracle map (1 in the sounding box) points at every box,
  and the gt maps are the stored boxes scaled to the evaluation size."""
  from soundloc_jax.configs import default
  config = default.get_config()
  config.dataset.image_size, config.eval.size = SIZE, 224
  for split in ("test", "test_unseen"):
    config.eval.batch_size = SIZES[split]  # one batch: the predict_fn answers for all of them
    source = built["builder"].as_data_source()[split]
    boxes = [np.asarray(source[i]["gt_boxes"]) for i in range(len(source))]
    oracle = np.stack([annotations.box_gt_map(b, size=SIZE) for b in boxes])
    result = evaluators.SplitEvaluator(split, source, config).run(lambda image, spec: oracle)
    assert result.metrics["n"] == SIZES[split] and result.metrics["pointing"] == 1.0
    for i in range(len(boxes)):
      np.testing.assert_array_equal(result.gt_maps[i],
                                    annotations.box_gt_map(boxes[i], size=224, image_size=SIZE))
    np.testing.assert_array_equal(
        annotations.gt_map_from_boxes(boxes[0], f"pixels:{SIZE}", 224), result.gt_maps[0])


def test_silent_object_scores():
  sounding = np.zeros((3, 8, 8), np.float32)
  sounding[:, :4, :4] = 1
  silent = [np.zeros((1, 8, 8), np.float32), np.zeros((2, 8, 8), np.float32),
            np.zeros((1, 8, 8), np.float32)]
  silent[0][0, 4:, 4:] = 1
  silent[1][0, 4:, 4:] = 1
  silent[1][1, :4, 4:] = 1
  silent[2][0, 4:, :4] = 1
  hot = np.zeros((8, 8), np.float32)
  hot[:4, :4] = 1
  hot[:4, 4:] = 2                              # hotter than the sounding box
  responses = np.stack([hot, hot, np.full((8, 8), 3.0, np.float32)])
  got = objects.silent_object_scores(responses, sounding, silent)
  np.testing.assert_array_equal(got, [1.0, 0.5, 0.5])   # beat 1 of 2; constant map ties
  with pytest.raises(ValueError, match="no silent object"):
    objects.silent_object_scores(responses[:1], sounding[:1], [np.zeros((0, 8, 8))])


def test_the_peak_is_placed_on_the_sounding_object_a_silent_one_or_elsewhere():
  """Random maps, 1-3 silent boxes each (some overlapping the sounding box):
  per sample, a loop over the resized map's argmax says on which object it
  lies; sounding wins over silent where boxes overlap; pointing and
  peak-on-silent never both hold."""
  rng = np.random.default_rng(1)
  n, size = 40, 16
  responses = rng.normal(size=(n, 4, 4)).astype(np.float32)

  def box_map():
    x0, y0 = rng.integers(0, size - 6, 2)
    return annotations.box_gt_map([[x0, y0, x0 + rng.integers(3, 7), y0 + rng.integers(3, 7)]],
                                  size=size)

  sounding = np.stack([box_map() for _ in range(n)])
  maps, valid = objects.pad_silent_maps(
      [np.stack([box_map() for _ in range(rng.integers(1, 4))]) for _ in range(n)])
  valid[0, 1:], maps[0, 1:] = False, 1.0  # a padded slot never counts, whatever it holds
  got = objects.peak_on_silent_object(responses, sounding, maps, valid)
  expected = []
  for i in range(n):
    heat = np.asarray(objects.resize_bilinear(responses[i], size))
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    on_silent = any(maps[i, k, y, x] > 0 for k in range(maps.shape[1]) if valid[i, k])
    expected.append(float(on_silent and not sounding[i, y, x] > 0))
  np.testing.assert_array_equal(got, expected)
  pointing = protocol.pointing_hits(responses, sounding)
  assert 0 < got.sum() < n and 0 < pointing.sum() and not np.any(got * pointing)


def test_silent_object_scores_match_a_loop_reference():
  """Random maps and boxes, 1-3 silent objects each, blocks of 4: the padded
  vectorised form equals a per-sample loop written from the definition."""
  rng = np.random.default_rng(0)
  n, size = 11, 16
  responses = rng.normal(size=(n, 4, 4)).astype(np.float32)
  responses[3] = 1.0  # a constant map ties with every silent object

  def box_map():
    x0, y0 = rng.integers(0, size - 4, 2)
    x1, y1 = x0 + rng.integers(2, 5), y0 + rng.integers(2, 5)
    return annotations.box_gt_map([[x0, y0, x1, y1]], size=size)

  sounding = np.stack([box_map() for _ in range(n)])
  silent = [np.stack([box_map() for _ in range(rng.integers(1, 4))]) for _ in range(n)]
  expected = []
  for i in range(n):
    heat = np.asarray(objects.resize_bilinear(responses[i], size), np.float64)
    mean = lambda m: float((m * heat).sum() / m.sum())  # noqa: E731
    ours = mean(sounding[i])
    scores = [1.0 if ours > mean(m) else 0.5 if ours == mean(m) else 0.0 for m in silent[i]]
    expected.append(sum(scores) / len(scores))
  got = objects.silent_object_scores(responses, sounding, silent, block_size=4)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
  assert got[3] == 0.5 and 0.0 < got.mean() < 1.0
  maps, valid = objects.pad_silent_maps(silent)
  np.testing.assert_array_equal(objects.silent_object_scores(responses, sounding, maps, valid),
                                got)


def test_catalog_grouping_rules_on_package_names():
  from soundloc_jax.data_builders.stamps import catalog
  key = catalog.lookalike_key
  assert key("animals/mammals/cats/lion-2.png") == key("animals/mammals/cats/cartoon/lion.png") == "lion"
  assert key("animals/birds/cartoon/tux.png") == key("animals/birds/little-penguin.png") == "penguin"
  assert key("animals/birds/cartoon/penguin_with_spider.png") == "penguin"
  assert key("animals/mammals/bovines/cow_white.png") == key("animals/mammals/bovines/zebu.png")
  assert key("animals/mammals/pig_golden2.png") == key("animals/mammals/pig.png") == "pig"
  assert key("symbols/alphabets/english/filled/lowercase/a_filled.png") == "letters"
  assert catalog.is_excluded_name("guineafowl") and catalog.is_excluded_name("Tiger_sumatran")
  assert not catalog.is_excluded_name("lion")
  rng = np.random.default_rng(0)
  burst = rng.standard_normal(3000) * np.hanning(3000)
  shifted = np.concatenate([np.zeros(700), 0.3 * burst, np.zeros(200)])
  assert catalog.max_normalised_correlation(burst, shifted) > 0.999
  assert catalog.max_normalised_correlation(burst, rng.standard_normal(2500)) < 0.3


def test_the_evaluator_runs_the_silent_object_test_on_stamps_splits(built):
  """`config.evals.test` of the stamps preset: localization, the silent-object
  test and retrieval. The oracle map wins against every silent object, a
  constant map ties (0.5); the silent maps are the stored silent boxes."""
  from soundloc_jax.configs import iterative
  config = iterative.get_config("stamps")
  config.eval.batch_size = 7  # several batches, the last one padded
  source = built["builder"].as_data_source()["test"]
  boxes = [np.asarray(source[i]["gt_boxes"]) for i in range(len(source))]
  oracle = np.stack([annotations.box_gt_map(b, size=SIZE) for b in boxes])
  calls = iter(range(len(source)))

  def predict(maps):
    def fn(image, spectrogram):
      take = [next(calls, len(source) - 1) for _ in range(len(image))]
      return maps[np.minimum(take, len(source) - 1)]
    return fn

  evals = ("localization", "silent_object")
  result = evaluators.SplitEvaluator("test", source, config, evals).run(predict(oracle))
  assert result.metrics["silent"] == 1.0 and result.metrics["pointing"] == 1.0
  assert result.metrics["silent_ci95_lo"] == 1.0 and "silent-object test 1.000" in result.describe()
  assert result.metrics["peak_silent"] == 0.0
  # A map of the first silent object: its peak is on that object, so on the
  # sounding one as well (pointing) or on a silent one only.
  calls = iter(range(len(source)))
  first_silent = np.stack([annotations.box_gt_map(np.asarray(source[i]["silent_boxes"])[:1],
                                                  size=SIZE) for i in range(len(source))])
  result = evaluators.SplitEvaluator("test", source, config, evals).run(predict(first_silent))
  assert result.metrics["peak_silent"] > 0.5
  assert result.metrics["peak_silent"] + result.metrics["pointing"] == pytest.approx(1.0)
  assert result.metrics["silent"] < 0.5
  calls = iter(range(len(source)))
  flat = np.ones_like(oracle)
  result = evaluators.SplitEvaluator("test", source, config, evals).run(predict(flat))
  assert result.metrics["silent"] == 0.5
  assert config.evals.test == ("localization", "silent_object", "retrieval")


@pytest.mark.parametrize("method", ["iterative", "lvs", "hard_positive", "ezvsl"])
def test_the_128px_preset_is_the_stamps_recipe_on_the_px128_build(method):
  """`stamps128` changes only the dataset (the builder's px128 config) and the
  image size, in every method file; the build it names stores 128 px images
  with the preset's front end."""
  import importlib
  from soundloc_jax.configs import datasets
  from soundloc_jax.data_builders.stamps import stamps_dataset_builder as sdb
  module = importlib.import_module(f"soundloc_jax.configs.{method}")
  base, big = module.get_config("stamps").to_dict(), module.get_config("stamps128").to_dict()
  assert big["dataset"].pop("name") == "stamps/px128" and base["dataset"].pop("name") == "stamps"
  assert (base["dataset"].pop("image_size"), big["dataset"].pop("image_size")) == (96, 128)
  assert big == base
  build = sdb.config_from_name("px128")
  assert build.image_size == 128
  assert audio.params_dict(build.audio) == audio.params_dict(module.get_config("stamps128").audio)
  assert datasets.STAMPS_PRESETS == ("stamps", "stamps128", "stamps_imagenet",
                                     "stamps128_imagenet")


@pytest.mark.parametrize("method", ["iterative", "lvs", "hard_positive", "ezvsl", "icl_hardpos"])
@pytest.mark.parametrize("size", ["", "128"])
def test_the_imagenet_presets_change_only_the_visual_stream(method, size):
  """`stamps{,128}_imagenet` is `stamps{,128}` with the ImageNet EfficientNet-Lite0
  visual stream (its folder, frozen trunk) and nothing else: same data, budget,
  optimizer rate and evaluation, in every method file."""
  import importlib
  from soundloc_jax.configs import datasets
  module = importlib.import_module(f"soundloc_jax.configs.{method}")
  plain = module.get_config(f"stamps{size}").to_dict()
  imagenet = module.get_config(f"stamps{size}_imagenet").to_dict()
  changed = {"visual_backbone": "efficientnet_lite0", "init_visual": datasets.IMAGENET_WEIGHTS,
             "visual_trunk": "frozen", "visual_bn": "train"}
  for key, value in changed.items():
    assert imagenet["model"].pop(key) == value
    plain["model"].pop(key)
  assert imagenet["optimizer"].pop("pretrained_lr_scale") == 0.1
  plain["optimizer"].pop("pretrained_lr_scale")
  assert imagenet == plain


# ----------------------------------------------------------------------------
# Off-screen splits (issue 32): the test images with a sound from nowhere in them.


def test_offscreen_splits_hold_the_test_images_with_a_sound_from_elsewhere(built):
  """Image i of test_offscreen is image i of test; its sound is a group that
  is no object of the image (nor, unless recorded, a background stamp); the
  stored mix holds that group's tone above every object's; no gt_boxes, every
  object's box a silent box (the base's sounding object first)."""
  meta = built["builder"].info.metadata
  assert meta["offscreen_splits"] == ["test_offscreen", "test_unseen_offscreen"]
  sources = built["builder"].as_data_source()
  for split, base in (("test_offscreen", "test"), ("test_unseen_offscreen", "test_unseen")):
    assert annotations.source_is_annotated(sources[split])
    for i in range(SIZES[split]):
      ex, orig = built["splits"][split][f"{split}_{i:06d}"], built["splits"][base][f"{base}_{i:06d}"]
      np.testing.assert_array_equal(ex["image"], orig["image"])
      assert ex["gt_boxes"].shape == (0, 4)
      np.testing.assert_array_equal(ex["silent_boxes"],
                                    np.concatenate([orig["gt_boxes"], orig["silent_boxes"]]))
      objects = {o["group"] for o in orig["scene"]["objects"]}
      assert ex["silent_groups"].split("|")[0] == orig["group"]
      assert set(ex["silent_groups"].split("|")) == objects and ex["group"] not in objects
      off = ex["scene"]["offscreen"]
      assert off["group"] == ex["group"] and off["image_of"] == orig["id"]
      if not off["in_background"]:
        assert ex["group"] not in _scene_groups(orig)
      if ex["scene"]["audio"]["distractor"]:
        assert ex["scene"]["audio"]["distractor"]["group"] not in _scene_groups(orig)
      heard = _band_energy(ex["waveform"], TONE_GROUPS[ex["group"]])
      for g in objects & set(TONE_GROUPS):
        assert heard > 5 * _band_energy(ex["waveform"], TONE_GROUPS[g]), (ex["id"], g)


def test_the_extended_evaluator_on_stamps_offscreen_and_probes(built):
  """The stamps preset's evaluators on test_offscreen with the extended one:
  nothing is visible (localization and the silent-object test score no pair,
  n = 0), a map lighting the first object is confident and lit on every pair,
  a flat map scores defined numbers; the probes on test give finite scores."""
  from soundloc_jax.configs import iterative
  config = iterative.get_config("stamps")
  config.audio.clip_seconds = AUDIO["clip_seconds"]  # the fake build's front end
  config.eval.batch_size = 5
  source = built["builder"].as_data_source()["test_offscreen"]
  n = len(source)
  lights = np.stack([annotations.box_gt_map(np.asarray(source[i]["silent_boxes"])[:1], size=SIZE)
                     for i in range(n)])      # cosine 1 on the object, 0 elsewhere
  calls = iter(range(n))

  def predict(image, spectrogram):
    return lights[np.minimum([next(calls, n - 1) for _ in range(len(image))], n - 1)]

  evals = ("localization", "silent_object", "extended")
  result = evaluators.SplitEvaluator("test_offscreen", source, config, evals).run(predict)
  m = result.metrics
  assert m["n_visible"] == 0 and m["n_offscreen"] == n and m["ap"] == 0.0
  assert m["ciou"] == 0.0 and m["silent"] == 0.0
  assert m["conf_offscreen_mean"] > 0.5 and m["false_alarm"] == 1.0 and m["lit_offscreen"] == 1.0
  assert all(np.isfinite(v) for v in m.values())
  assert "extended AP 0.000" in result.describe()
  test = built["builder"].as_data_source()["test"]
  config.eval.extended.probes = ("silence", "noise")
  result = evaluators.SplitEvaluator("test", test, config, evals).run(
      lambda image, spec: np.zeros((len(image), 8, 8), np.float32))
  m = result.metrics
  assert m["n_visible"] == len(test) and m["own_above_silence"] == 0.5
  assert all(np.isfinite(v) for v in m.values())


def test_a_split_scored_with_its_offscreen_split(built):
  """`evaluators.score_with_offscreen` (what compare_methods --rescore writes
  for every stamps row): a model that lights the sounding box for the pair's
  own sound and nothing for a sound from elsewhere, silence or noise scores
  AP 1 over test + test_offscreen; one that ignores the sound scores AP at
  the positive rate (1/2: each image once with each)."""
  from soundloc_jax.configs import iterative
  config = iterative.get_config("stamps")
  config.audio.clip_seconds = AUDIO["clip_seconds"]
  config.eval.protocol = "fixed"
  config.eval.extended.probes = ("silence", "noise")
  sources = built["builder"].as_data_source()
  test, off = sources["test"], sources["test_offscreen"]
  key = lambda spec: np.asarray(spec, np.float16).tobytes()  # noqa: E731
  maps = {key(test[i]["spectrogram"]): annotations.box_gt_map(test[i]["gt_boxes"], size=SIZE) * 2 - 1
          for i in range(len(test))}

  def follows_the_sound(image, spectrogram):
    return np.stack([maps.get(key(s), np.full((SIZE, SIZE), -1.0)) for s in spectrogram])

  m = evaluators.score_with_offscreen(config, "test", test, off, follows_the_sound)
  assert m["n_visible"] == len(test) and m["n_offscreen"] == len(off) and m["n"] == 2 * len(test)
  assert m["ap"] == pytest.approx(1.0) and m["max_f1"] == 1.0 and m["lit_offscreen"] == 0.0
  assert m["silence_ap"] == pytest.approx(1.0) and m["own_above_noise"] == 1.0
  by_image, own_spec = {}, {test[i]["id"].decode(): key(test[i]["spectrogram"])
                            for i in range(len(test))}
  for source in (test, off):
    for i in range(len(source)):
      ex = source[i]
      base = json.loads(ex["scene"]).get("offscreen", {}).get("image_of", ex["id"].decode())
      by_image[key(ex["spectrogram"])] = (maps[own_spec[base]] + 1) / 2

  def sees_only_the_image(image, spectrogram):
    # the map of the image (found through its pair), whatever the sound: cosine
    # 1 on the box and 0 elsewhere, so always confident (>= 0.5)
    return np.stack([by_image.get(key(s), np.zeros((SIZE, SIZE))) for s in spectrogram])

  m = evaluators.score_with_offscreen(config, "test", test, off, sees_only_the_image)
  assert m["ap"] == pytest.approx(0.5) and m["lit_offscreen"] == 1.0


def test_the_offscreen_reference_maps_score_what_they_should(built):
  """scripts/offscreen_baselines.py: the oracle that follows the sound scores
  AP 1, the one that sees only the image AP 1/2 with every off-screen pair
  lit, the centre guess one confidence for all (AP = the positive rate)."""
  from soundloc_jax.configs import iterative
  from tests.helpers import import_script
  script = import_script("offscreen_baselines")
  config = iterative.get_config("stamps")
  config.audio.clip_seconds = AUDIO["clip_seconds"]
  config.dataset.image_size = SIZE
  config.eval.extended.probes = ("silence", "noise")
  sources = built["builder"].as_data_source()
  test, off = sources["test"], sources["test_offscreen"]
  maps = script.reference_maps(test, f"pixels:{SIZE}", config.eval.size, SIZE, SIZE // 16,
                               np.random.default_rng(0))
  follows = script.score_all(config, "test", test, off, maps["oracle, follows the sound"])
  assert follows["ap"] == pytest.approx(1.0) and follows["own_above_silence"] == 1.0
  assert follows["ap_slavc"] < 1.0 and follows["lit_offscreen"] == 0.0
  assert follows["false_alarm_f1"] == 0.0 and follows["false_alarm_f1_noise"] == 0.0
  image_only = script.score_all(config, "test", test, off, maps["oracle, image only"])
  assert image_only["ap"] == pytest.approx(0.5) and image_only["own_above_noise"] == 0.5
  assert image_only["false_alarm_f1"] == 1.0  # max-F1 detects everything: P 1/2, R 1
  centre = script.score_all(config, "test", test, off, maps["centre guess"])
  assert centre["conf_visible_p50"] == centre["conf_offscreen_p50"]


def test_compare_methods_rescore_adds_the_extended_protocol_to_stamps_rows(built, tmp_path):
  """`compare_methods.py --rescore` on the fake build: the centre guess and a
  trained row (the step-0 model, trained by main) get `eval/<split>/extended.json`
  for test and test_unseen (with their off-screen splits and the probes), and
  the stamps table shows AP and max-F1 for both; nothing is trained again."""
  from tests.helpers import import_script
  compare = import_script("compare_methods")
  data_dir = str(built["root"] / "data")
  extra = ["--config.dataset.name=stamps/fake", f"--config.dataset.image_size={SIZE}",
           f"--config.audio.clip_seconds={AUDIO['clip_seconds']}", "--config.batch_size=8",
           "--config.model.width=4", "--config.eval.batch_size=12"]
  argv = [f"--out={tmp_path}", "--seeds=0", "--methods=untrained,centre", "--benchmark=stamps",
          f"--data_dir={data_dir}"] + [f"--extra={e}" for e in extra]
  compare.main(argv)      # trains the step-0 row, scores both (and their extended numbers)
  untrained = compare.workdir_of(str(tmp_path), "untrained", 0)
  first = os.path.getmtime(compare.test_metrics_path(untrained))
  os.remove(compare.extended_path(untrained, "test"))
  compare.main(argv + ["--rescore"])
  for method in ("untrained", "centre"):
    for split in ("test", "test_unseen"):
      with open(compare.extended_path(compare.workdir_of(str(tmp_path), method, 0), split)) as f:
        m = json.load(f)
      assert m["n_visible"] == SIZES[split] and m["n_offscreen"] == SIZES[f"{split}_offscreen"]
      assert all(np.isfinite(v) for v in m.values() if isinstance(v, float))
      assert 0.0 <= m["own_above_silence"] <= 1.0
  assert os.path.getmtime(compare.test_metrics_path(untrained)) >= first
  assert not os.path.exists(os.path.join(untrained, "checkpoints", "1"))  # nothing trained
  with open(os.path.join(tmp_path, "results.md")) as f:
    table = f.read()
  row = next(line for line in table.splitlines() if line.startswith("| untrained"))
  assert "n/a" not in row.split("|", 3)[3]
