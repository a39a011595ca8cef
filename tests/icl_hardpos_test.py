"""ICL x HardPos end to end on the suite's reduced demo build (768 train):
a Vanilla-LVS baseline, its mined neighbours, then icl_hardpos training with
the teacher and the neighbour batches at once."""

import json
import os

import jax
import numpy as np
import pytest

import soundloc_jax
from soundloc_jax import mine, train
from soundloc_jax.configs import icl_hardpos as icl_hardpos_config
from soundloc_jax.configs import lvs
from tests.helpers import neighbour_demo_config


def demo_config(config, data_dir, log_every_steps=4, **overrides):
  return neighbour_demo_config(config, data_dir, log_every_steps=log_every_steps, **overrides)


@pytest.fixture(scope="module")
def baseline(demo_data_dir, tmp_path_factory):
  """A Vanilla-LVS run of 48 steps (one epoch) and its mined neighbours (K = 50)."""
  workdir = str(tmp_path_factory.mktemp("baseline"))
  train.train_and_evaluate(demo_config(lvs.get_config(",variant=vanilla"), demo_data_dir),
                           workdir)
  return workdir, mine.mine(workdir, num_neighbours=50, batch_size=128, block_size=200)


def _train_records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r.get("split") == "train"]


def test_it_trains_from_the_baseline_as_first_teacher_and_the_loss_falls(baseline,
                                                                         demo_data_dir,
                                                                         tmp_path):
  """The `_init` setting of compare_methods: the baseline's weights, the
  baseline as the first teacher (init_epochs=0, no guard), mined neighbours:
  the teacher is used from the first step, every diagnostic is logged, the
  loss falls within the first teacher's epoch, and the run scores its test split."""
  workdir, path = baseline
  config = demo_config(icl_hardpos_config.get_config(""), demo_data_dir, num_epochs=2,
                       log_every_steps=2,
                       **{"method.neighbours_path": path, "method.num_neighbours": 50,
                          "method.init_epochs": 0, "method.teacher_guard": False,
                          "model.init_from": workdir})
  result = train.train_and_evaluate(config, str(tmp_path))
  records = _train_records(str(tmp_path))
  assert all(r["teacher"] for r in records)
  for key in ("positive_response", "hard_positive_response", "positive_patch_fraction",
              "inter_positives_per_row", "negatives_per_row", "constant_map_fraction"):
    assert all(np.isfinite(r[key]) for r in records), key
  assert all(0 < r["positive_patch_fraction"] < 1 for r in records)
  assert all(r["negatives_per_row"] < 15 for r in records)  # mined neighbours left out
  first_epoch = [r["loss"] for r in records if r["epoch"] == 0]
  assert len(first_epoch) == 24
  print("loss in the first teacher's epoch:", np.round(first_epoch, 3))
  assert np.mean(first_epoch[-6:]) < np.mean(first_epoch[:6]) - 0.1
  assert "test" in result
  with open(tmp_path / "eval" / "test" / "metrics.json") as f:
    assert 0.0 <= json.load(f)["pointing"] <= 1.0
  assert soundloc_jax.load(str(tmp_path)).step == 96


def test_from_scratch_eq3_with_mined_positives_then_the_teacher(baseline, demo_data_dir,
                                                                tmp_path):
  """From scratch: epoch 0 without a teacher (Eq. 3 with the mined positives),
  epoch 1 with it; the mined Eq. 6 relation reaches the loss through the
  batches' audio_neighbour_mask (more than the diagonal per row), and the
  soft-masked mined region trains too."""
  _, path = baseline
  config = demo_config(icl_hardpos_config.get_config(""), demo_data_dir, num_epochs=2,
                       max_steps=60,
                       **{"method.neighbours_path": path, "method.num_neighbours": 50,
                          "method.init_epochs": 1, "method.teacher_guard": False,
                          "method.inter_positives": "mined", "method.mined_region": "soft"})
  train.train_and_evaluate(config, str(tmp_path))
  records = _train_records(str(tmp_path))
  assert [r["teacher"] for r in records] == [r["epoch"] >= 1 for r in records]
  assert any(r["teacher"] for r in records) and not all(r["teacher"] for r in records)
  assert all(np.isfinite(r["loss"]) for r in records)
  assert np.mean([r["inter_positives_per_row"] for r in records]) > 1.0
  assert all(r["constant_map_fraction"] == 0 and r["positive_patch_fraction"] == 1.0
             for r in records if not r["teacher"])  # whole-image regions without a teacher


@pytest.mark.parametrize("benchmark", ["demo", "stamps128", "stamps128_imagenet"])
def test_compare_methods_rows_change_one_switch_each_and_pass_the_check(benchmark):
  """scripts/compare_methods.py's ICL x HardPos rows: each loads on the
  benchmark's preset, passes the method's config check, mines from the
  Vanilla-LVS row (Random HP's row draws instead), and differs from the
  default row in exactly the fields its flags name."""
  import importlib
  from soundloc_jax import methods
  from tests.helpers import import_script
  compare = import_script("compare_methods")
  rows = [m for m in compare.METHODS if m == "icl_hardpos" or m.startswith("ihp_")]
  assert {"icl_hardpos", "ihp_b_image", "ihp_b", "ihp_ba", "ihp_bv", "ihp_bav", "ihp_soft",
          "ihp_inter_mined", "ihp_inter_off", "ihp_image", "ihp_audio", "ihp_no_intra",
          "ihp_random"} <= set(rows)

  def load(row):
    config, baseline, _, flags = compare.METHODS[row]
    path, _, arg = compare.config_arg(config, benchmark).partition(":")
    module = importlib.import_module("soundloc_jax.configs." + os.path.basename(path)[:-3])
    return compare.apply_extra(module.get_config(arg), list(flags)), baseline, flags

  default, _, _ = load("icl_hardpos")
  flat = lambda c: {f"{k}.{f}": v for k, b in c.to_dict().items() if isinstance(b, dict)  # noqa
                    for f, v in b.items()}
  for row in rows + ["icl_hardpos_init"]:
    config, baseline, flags = load(row)
    assert config.method.name == "icl_hardpos"
    methods.get("icl_hardpos").check_config(config.method)
    assert baseline == ("lvs_vanilla" if config.method.neighbours == "mined" else None), row
    changed = {k for k, v in flat(config).items() if flat(default)[k] != v}
    named = {f[len("--config."):].partition("=")[0] for f in flags}
    if row == "ihp_random":
      named = {"method.neighbours"}
    assert changed == named, (row, changed, named)


def test_a_resumed_run_equals_an_uninterrupted_one_across_a_teacher_refresh(baseline,
                                                                           demo_data_dir,
                                                                           tmp_path):
  """Stopped mid-epoch and resumed past the epoch end where the teacher is
  refreshed: the teacher, the student, the optimizer and BatchNorm state all
  equal the uninterrupted run's, bit for bit (neighbour draws and the teacher
  both come from the checkpoint and (seed, step))."""
  from soundloc_jax import checkpointing
  from soundloc_jax import state as train_state
  workdir, path = baseline

  def config(max_steps):
    return demo_config(icl_hardpos_config.get_config(""), demo_data_dir, num_epochs=2,
                       max_steps=max_steps,
                       **{"method.neighbours_path": path, "method.num_neighbours": 50,
                          "method.init_epochs": 0, "method.teacher_guard": False,
                          "model.init_from": workdir})

  train.train_and_evaluate(config(52), str(tmp_path / "full"))
  for stop in (30, 52):
    train.train_and_evaluate(config(stop), str(tmp_path / "resumed"))
  states = []
  for run in ("full", "resumed"):
    ckpt = checkpointing.Checkpointer(str(tmp_path / run / "checkpoints"))
    _, abstract = train_state.create_train_state(config(52), train_state.make_optimizer(config(52)),
                                                 pretrained=False)
    states.append(ckpt.restore(ckpt.latest_step(), abstract)[0])
    ckpt.close()
  a, b = states
  assert int(a["step"]) == int(b["step"]) == 52
  for key in ("params", "batch_stats", "opt_state", "teacher_params", "teacher_batch_stats"):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                 a[key], b[key])
  # The teacher was refreshed at step 48: it is no longer the baseline's model.
  assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(
      jax.tree.leaves(a["teacher_params"]),
      jax.tree.leaves(soundloc_jax.load(workdir).params)))
