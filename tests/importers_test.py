"""Weight importers: the torch-file reader, torchvision ResNet-18 and LVS parity, errors.

The fixtures were made by torch (`tests/fixtures/make_fixtures.py`); these
tests run without it. Parity: our converted weights in eval mode reproduce
torch's float64 outputs of the same network within 1e-4.
"""

import os
import pickle
import struct
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from soundloc_jax.errors import ConfigError, UserError
from soundloc_jax.models.resnet import ResNet18
from soundloc_jax.tools import import_lvs, import_torchvision_resnet18, resnet_weights
from soundloc_jax.tools import torch_pickle

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
RESNET_PTH = os.path.join(FIXTURES, "resnet18_w6.pth")
LVS_PTH = os.path.join(FIXTURES, "lvs_w4.pth.tar")
ATOL = 1e-4


def _nhwc(x):
  return np.asarray(x).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("resnet18_w6"))
  assert import_torchvision_resnet18.main(["--checkpoint", RESNET_PTH, "--out", out]) == 0
  return out


@pytest.fixture(scope="module")
def lvs_workdir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("lvs") / "workdir")
  assert import_lvs.main(["--checkpoint", LVS_PTH, "--out", out]) == 0
  return out


# ----------------------------------------------------------------------------
# Reading torch files
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tensors.pth", "tensors_legacy.pth"])
def test_reads_every_dtype_and_view_in_both_formats(name):
  loaded = torch_pickle.load(os.path.join(FIXTURES, name))
  with np.load(os.path.join(FIXTURES, "tensors.npz")) as expected:
    assert sorted(loaded) == sorted(expected.files)
    for key in expected.files:
      got, want = loaded[key], expected[key]
      assert got.shape == want.shape, key
      if key == "bfloat16":
        assert str(got.dtype) == "bfloat16"
        got = got.astype(np.float32)
      else:
        assert got.dtype == want.dtype, key
      np.testing.assert_array_equal(got, want, err_msg=key)


def test_reads_the_nested_legacy_lvs_release_layout():
  obj = torch_pickle.load(LVS_PTH)
  assert obj["epoch"] == 3
  assert obj["optimizer_state_dict"]["param_groups"][0]["lr"] == 1e-4
  state = obj["model_state_dict"]
  assert all(k.startswith("module.") for k in state)
  assert state["module.audnet.conv1_a.weight"].shape == (4, 1, 7, 7)
  assert state["module.imgnet.bn1.num_batches_tracked"] == 7


# ----------------------------------------------------------------------------
# torchvision ResNet-18
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("stride,key", [(2, "layer4"), (1, "layer4_stride1")])
def test_torchvision_resnet18_matches_torch(resnet_dir, stride, key):
  """torchvision's stride-2 layer4 and LVS's stride-1 variant from the same weights."""
  with np.load(os.path.join(FIXTURES, "resnet18_w6_features.npz")) as f:
    image, want = f["image"], f[key]
  net = ResNet18(3, width=6, layer4_stride=stride, rngs=nnx.Rngs(1))
  resnet_weights.load_dir(net, resnet_dir)
  net.eval()
  got = np.asarray(net(jnp.asarray(_nhwc(image))))
  assert got.shape == _nhwc(want).shape
  np.testing.assert_allclose(got, _nhwc(want), rtol=0, atol=ATOL)


def test_converter_keeps_fc_apart_drops_counters_and_records_its_source(resnet_dir):
  import json
  with open(os.path.join(resnet_dir, "info.json")) as f:
    info = json.load(f)
  assert info == {"format": resnet_weights.FORMAT, "width": 6, "in_channels": 3,
                  "source": RESNET_PTH}
  with np.load(os.path.join(resnet_dir, resnet_weights.WEIGHTS_FILE)) as npz:
    names = set(npz.files)
    torch_state = torch_pickle.load(RESNET_PTH)
    # OIHW -> HWIO, and BatchNorm statistics land in batch_stats.
    np.testing.assert_array_equal(npz["params/layers/1/0/downsample_conv/kernel"],
                                  torch_state["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(npz["batch_stats/layers/3/1/bn2/var"],
                                  torch_state["layer4.1.bn2.running_var"])
    # The classifier is kept for tools.classify, outside the model's variables.
    np.testing.assert_array_equal(npz[resnet_weights.FC_KERNEL], torch_state["fc.weight"].T)
    np.testing.assert_array_equal(npz[resnet_weights.FC_BIAS], torch_state["fc.bias"])
  assert not any("num_batches" in n for n in names)
  # Every weight of the model and the classifier: 20 convolutions + 20 BatchNorms x 4 + 2.
  expected = sum(1 for k in torch_state if not k.endswith("num_batches_tracked"))
  assert len(names) == expected == 20 + 20 * 4 + 2


def test_init_visual_starts_only_the_visual_stream(resnet_dir):
  from soundloc_jax.configs import default
  from soundloc_jax import state as train_state
  config = default.get_config()
  config.model.width = 6
  optimizer = train_state.make_optimizer(config)
  _, plain = train_state.create_train_state(config, optimizer)
  config.model.init_visual = resnet_dir
  _, state = train_state.create_train_state(config, optimizer)
  with np.load(os.path.join(resnet_dir, resnet_weights.WEIGHTS_FILE)) as npz:
    np.testing.assert_array_equal(state["params"]["visual"]["layers"][2][1]["conv2"]["kernel"],
                                  npz["params/layers/2/1/conv2/kernel"])
    np.testing.assert_array_equal(state["batch_stats"]["visual"]["bn1"]["mean"],
                                  npz["batch_stats/bn1/mean"])
  np.testing.assert_array_equal(state["teacher_params"]["visual"]["conv1"]["kernel"],
                                state["params"]["visual"]["conv1"]["kernel"])
  np.testing.assert_array_equal(state["params"]["audio"]["conv1"]["kernel"],
                                plain["params"]["audio"]["conv1"]["kernel"])
  assert not np.array_equal(state["params"]["visual"]["conv1"]["kernel"],
                            plain["params"]["visual"]["conv1"]["kernel"])


def test_init_visual_errors_name_the_directory(resnet_dir, tmp_path):
  from soundloc_jax.configs import default
  from soundloc_jax import state as train_state
  config = default.get_config()
  config.model.init_visual = str(tmp_path / "nowhere")
  with pytest.raises(ConfigError, match="init_visual: .*nowhere does not exist"):
    train_state.create_train_state(config, train_state.make_optimizer(config))
  # A caller about to restore a checkpoint does not need the directory.
  train_state.create_train_state(config, train_state.make_optimizer(config), pretrained=False)
  config.model.init_visual = resnet_dir
  config.model.width = 8  # the directory holds width 6
  with pytest.raises(ConfigError, match=r"resnet18.npz: params/bn1/bias has shape \(6,\), "
                                        r"the model expects \(8,\).*width-6 ResNet-18"):
    train_state.create_train_state(config, train_state.make_optimizer(config))


def test_run_from_init_visual_resumes_and_loads_after_the_folder_is_gone(
    resnet_dir, demo_data_dir, tmp_path):
  """The weights folder is read once, at step 0: a resumed run, `load` and
  `--mode=eval` restore every weight from the checkpoint."""
  import shutil

  import soundloc_jax
  from soundloc_jax import evaluate, train
  from tests.helpers import tiny_config
  init = str(tmp_path / "imagenet")
  shutil.copytree(resnet_dir, init)
  workdir = str(tmp_path / "run")
  config = tiny_config(demo_data_dir, max_steps=2, **{"model.width": 6,
                                                      "model.init_visual": init})
  train.train_and_evaluate(config, workdir)
  shutil.rmtree(init)
  model = soundloc_jax.load(workdir)
  assert model.config.model.init_visual == init
  config.max_steps = 4  # resumable key: the same run goes on
  train.train_and_evaluate(config, workdir)
  evaluate.evaluate_checkpoint(config, workdir)


# ----------------------------------------------------------------------------
# The released LVS model
# ----------------------------------------------------------------------------

def test_lvs_import_matches_torch_through_load(lvs_workdir):
  import soundloc_jax
  from soundloc_jax.models import av_model
  with np.load(os.path.join(FIXTURES, "lvs_w4_outputs.npz")) as f:
    ref = {k: f[k] for k in f.files}
  loc = soundloc_jax.load(lvs_workdir)
  assert loc.step == 0 and loc.config.model.audio_pool == "max"
  assert loc.config.model.audio_layer4_stride == 1 and loc.config.model.width == 4
  image, spectrogram = jnp.asarray(_nhwc(ref["image"])), jnp.asarray(ref["spectrogram"][:, 0])
  response = loc._predict(loc.params, loc.batch_stats, image, spectrogram)
  np.testing.assert_allclose(response, ref["response"], rtol=0, atol=ATOL)
  model = nnx.merge(loc.graphdef, loc.params, loc.batch_stats)
  model.eval()
  out = model(image, spectrogram)
  np.testing.assert_allclose(out["visual_features"], _nhwc(ref["visual_features"]), atol=ATOL)
  np.testing.assert_allclose(out["audio_embedding"], ref["audio_embedding"], atol=ATOL)
  # Our default audio pooling (mean) would give another embedding: the option matters.
  model.audio_pool = "mean"
  mean_pooled = np.asarray(model(image, spectrogram)["audio_embedding"])
  assert np.abs(mean_pooled - ref["audio_embedding"]).max() > 100 * ATOL
  assert set(av_model.AUDIO_POOLS) == {"mean", "max"}


def test_eval_command_config_is_the_recorded_one(lvs_workdir):
  """`--mode=eval --config=configs/lvs_released.py` (the README's command) builds
  the config the import recorded in config.json (width: the fixture's)."""
  import json

  from soundloc_jax.configs import lvs_released
  with open(os.path.join(lvs_workdir, "config.json")) as f:
    recorded = json.load(f)
  config = lvs_released.get_config("vggss")
  config.model.width = 4
  assert json.loads(config.to_json_best_effort()) == recorded


def test_lvs_import_refuses_a_used_workdir_and_a_non_lvs_file(lvs_workdir, tmp_path, capsys):
  assert import_lvs.main(["--checkpoint", LVS_PTH, "--out", lvs_workdir]) == 2
  assert "already holds checkpoints" in capsys.readouterr().err
  assert import_lvs.main(["--checkpoint", RESNET_PTH, "--out", str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "no imgnet.conv1.weight" in err and RESNET_PTH in err


# ----------------------------------------------------------------------------
# Errors a user can cause
# ----------------------------------------------------------------------------

def test_wrong_shape_names_key_and_both_shapes(tmp_path, capsys):
  bad = os.path.join(FIXTURES, "bad_shape.pth")
  assert import_torchvision_resnet18.main(["--checkpoint", bad, "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip()
  assert err == f"error: {bad}: bn1.weight has shape (5,), the model expects (4,)"
  assert not os.listdir(tmp_path)  # nothing written


def test_unexpected_and_missing_tensors_are_named():
  state = dict(torch_pickle.load(RESNET_PTH))
  net = ResNet18(3, width=6, rngs=nnx.Rngs(0))
  used = resnet_weights.assign_from_torch(net, state, "x.pth")
  state["layer1.2.conv1.weight"] = np.zeros((6, 6, 3, 3), np.float32)  # a ResNet-34 block
  with pytest.raises(resnet_weights.WeightsError, match=r"x.pth: 1 unexpected .*layer1.2.conv1"):
    resnet_weights.check_leftovers(state, used, "x.pth",
                                   ignored=lambda k: k.startswith("fc.") or "num_batches" in k)
  del state["layer3.1.bn2.running_var"]
  with pytest.raises(resnet_weights.WeightsError, match="missing tensor layer3.1.bn2.running_var"):
    resnet_weights.assign_from_torch(net, state, "x.pth")


def test_an_lvs_file_given_to_the_torchvision_importer_says_which_tool(tmp_path, capsys):
  assert import_torchvision_resnet18.main(["--checkpoint", LVS_PTH, "--out", str(tmp_path)]) == 2
  assert "an LVS model: use python -m soundloc_jax.tools.import_lvs" in capsys.readouterr().err


def test_missing_file(tmp_path, capsys):
  missing = str(tmp_path / "resnet18.pth")
  assert import_torchvision_resnet18.main(["--checkpoint", missing, "--out",
                                           str(tmp_path / "o")]) == 2
  assert capsys.readouterr().err.strip() == f"error: {missing}: no such file"


def _zip_with(path, members):
  with zipfile.ZipFile(path, "w") as zf:
    for name, data in members.items():
      zf.writestr(name, data)
  return str(path)


def test_not_a_torch_file(tmp_path):
  text = tmp_path / "notes.pth"
  text.write_text("not a checkpoint")
  plain_pickle = tmp_path / "plain.pkl"
  plain_pickle.write_bytes(pickle.dumps({"a": 1}, protocol=2))
  other_zip = _zip_with(tmp_path / "other.zip", {"readme.txt": "hello"})
  for path, message in [(text, "not a torch file"), (plain_pickle, "not one written by torch"),
                        (other_zip, "without a torch data.pkl")]:
    with pytest.raises(torch_pickle.TorchFileError, match=message) as e:
      torch_pickle.load(str(path))
    assert str(path) in str(e.value) and isinstance(e.value, UserError)


def test_truncated_storage(tmp_path):
  with zipfile.ZipFile(os.path.join(FIXTURES, "tensors.pth")) as zf:
    members = {n: zf.read(n) for n in zf.namelist()}
  data = sorted(n for n in members if "/data/" in n)[0]
  members[data] = members[data][:3]
  with pytest.raises(torch_pickle.TorchFileError, match="is truncated"):
    torch_pickle.load(_zip_with(tmp_path / "cut.pth", members))


def _system_call_pickle(marker):
  """Protocol-2 pickle bytes that would call os.system (posix.system) on load."""
  command = f"touch {marker}".encode()
  return (b"\x80\x02cposix\nsystem\nX" + struct.pack("<I", len(command)) + command
          + b"\x85R.")


def test_forbidden_global_is_refused_not_run(tmp_path):
  marker = tmp_path / "pwned"
  evil = _system_call_pickle(marker)
  zipped = _zip_with(tmp_path / "evil.pth", {"archive/data.pkl": evil})
  legacy = tmp_path / "evil_legacy.pth"
  legacy.write_bytes(pickle.dumps(torch_pickle.LEGACY_MAGIC, protocol=2)
                     + pickle.dumps(torch_pickle.LEGACY_PROTOCOL, protocol=2)
                     + pickle.dumps({"little_endian": True}, protocol=2) + evil)
  for path in (zipped, str(legacy)):
    with pytest.raises(torch_pickle.TorchFileError, match="refusing the pickled global "
                                                          "posix.system"):
      torch_pickle.load(path)
  assert not marker.exists()
