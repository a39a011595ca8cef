"""The trainer on the demo data: teacher semantics, resume, learning, errors."""

import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soundloc_jax.configs import iterative
from soundloc_jax import errors, evaluate, input_pipeline, methods, train
from soundloc_jax import state as train_state
from tests.helpers import assert_trees_equal as _assert_trees_equal
from tests.helpers import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b, s = config.batch_size, config.dataset.image_size
  return {"image": jnp.asarray(rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)),
          "spectrogram": jnp.asarray(rng.normal(size=(b, 64, 63)).astype(np.float32))}


def test_teacher_frozen_within_epoch_refreshed_at_boundary_and_gets_no_gradient():
  config = tiny_config("", batch_size=8)
  optimizer = train_state.make_optimizer(config)
  graphdef, state = train_state.create_train_state(config, optimizer)
  step = train.make_train_step(graphdef, methods.get("icl"), config.method, optimizer,
                               teacher_active=True)
  teacher_before = jax.tree.map(np.asarray, (state["teacher_params"],
                                             state["teacher_batch_stats"]))
  student_before = jax.tree.map(np.asarray, state["params"])
  for i in range(3):
    state, metrics = step(state, _random_batch(config, seed=i))
    assert np.isfinite(float(metrics["loss"]))
  # Unchanged during the epoch, while the student moved.
  _assert_trees_equal(teacher_before, (state["teacher_params"], state["teacher_batch_stats"]))
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)),
                                       student_before, state["params"]))
  assert any(moved)
  # Epoch end: equal to the student, in buffers of its own.
  state = train_state.refresh_teacher(state)
  _assert_trees_equal(state["params"], state["teacher_params"])
  _assert_trees_equal(state["batch_stats"], state["teacher_batch_stats"])
  leaf = jax.tree.leaves(state["params"])[0]
  assert jax.tree.leaves(state["teacher_params"])[0].unsafe_buffer_pointer() != \
      leaf.unsafe_buffer_pointer()
  # Still usable after the student's buffers are donated by the next step.
  teacher_copy = jax.tree.map(np.asarray, state["teacher_params"])
  state, _ = step(state, _random_batch(config, seed=9))
  _assert_trees_equal(teacher_copy, state["teacher_params"])

  # No gradient reaches the teacher through the ICL loss.
  from flax import nnx
  batch = _random_batch(config, seed=5)

  def loss_of_teacher(teacher_params):
    teacher = nnx.merge(graphdef, teacher_params, state["teacher_batch_stats"])
    teacher.eval()
    student = nnx.merge(graphdef, state["params"], state["batch_stats"])
    student.eval()
    t_out = teacher(batch["image"], batch["spectrogram"])
    s_out = student(batch["image"], batch["spectrogram"])
    return methods.get("icl").loss(s_out, t_out, batch, config.method, jax.random.key(0))[0]

  grads = jax.grad(loss_of_teacher)(state["teacher_params"])
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))


def test_epoch_sampler_fresh_permutation_each_epoch():
  sampler = input_pipeline.EpochSampler(num_examples=10, global_batch=3, seed=0)
  assert sampler.steps_per_epoch == 3
  epoch0 = [sampler(i) for i in range(9)]
  epoch1 = [sampler(9 + i) for i in range(9)]
  assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9
  assert epoch0 != epoch1


def _final_state(workdir, config):
  from soundloc_jax import checkpointing
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  step = ckpt.latest_step()
  _, abstract = train_state.create_train_state(config, train_state.make_optimizer(config))
  state, _ = ckpt.restore(step, abstract)
  ckpt.close()
  return step, state


def test_resumed_run_equals_uninterrupted_run(demo_data_dir, tmp_path):
  # Also scores a second test set named "dataset:split".
  full = tiny_config(demo_data_dir, num_epochs=2, **{"dataset.test_splits": ("test",
                                                                              "av_digits:validation")})
  result = train.train_and_evaluate(full, str(tmp_path / "full"))
  assert set(result["test"]) == {"test", "av_digits:validation"}
  assert os.path.exists(tmp_path / "full" / "eval" / "av_digits_validation" / "metrics.json")
  # Interrupted mid-epoch (step 5 of 24 per epoch) and again after the epoch
  # boundary, then resumed to the end with the same command.
  for stop in (5, 30, 0):
    train.train_and_evaluate(tiny_config(demo_data_dir, num_epochs=2, max_steps=stop),
                             str(tmp_path / "resumed"))
  step_a, state_a = _final_state(str(tmp_path / "full"), full)
  step_b, state_b = _final_state(str(tmp_path / "resumed"), full)
  assert step_a == step_b == 2 * (768 // 32)
  for key in ("params", "batch_stats", "teacher_params", "opt_state"):
    _assert_trees_equal(state_a[key], state_b[key])


def test_workdir_with_other_config_is_refused(demo_data_dir, tmp_path):
  train.train_and_evaluate(tiny_config(demo_data_dir, max_steps=2), str(tmp_path))
  with pytest.raises(errors.TrainingError, match="different config"):
    train.train_and_evaluate(tiny_config(demo_data_dir, max_steps=4, **{"method.tau": 0.2}),
                             str(tmp_path))


def test_workdir_from_before_a_new_config_field_still_resumes(demo_data_dir, tmp_path):
  """A field added later at its default is not a change; one set otherwise is."""
  train.train_and_evaluate(tiny_config(demo_data_dir, max_steps=2), str(tmp_path))
  path = tmp_path / "config.json"
  recorded = json.loads(path.read_text())
  del recorded["model"]["audio_pool"]  # as written before the field existed
  path.write_text(json.dumps(recorded))
  with pytest.raises(errors.TrainingError, match=r"differs in: model\.audio_pool\)"):
    train.train_and_evaluate(tiny_config(demo_data_dir, max_steps=4, **{"model.audio_pool": "max"}),
                             str(tmp_path))
  train.train_and_evaluate(tiny_config(demo_data_dir, max_steps=4), str(tmp_path))
  assert json.loads(path.read_text())["model"]["audio_pool"] == "mean"


# Learning needs more examples than the suite's reduced split: 4,000 training
# examples (the full demo's train split), small validation / test splits.
LEARNING_DATASET = "av_digits/small_4000_128_128"


@pytest.mark.slow
def test_icl_learns_to_localize_on_demo_data(demo_data_dir, tmp_path):
  """~2 min on 2 cores: 3 epochs of Eq. 3, then 2 epochs of ICL Eq. 7."""
  overrides = {"dataset.name": LEARNING_DATASET, "model.width": 16, "batch_size": 64,
               "optimizer.learning_rate": 3e-3, "method.init_epochs": 3}
  untrained = train.train_and_evaluate(tiny_config(demo_data_dir, num_epochs=0, **overrides),
                                       str(tmp_path / "untrained"))
  workdir = str(tmp_path / "learn")
  result = train.train_and_evaluate(tiny_config(demo_data_dir, num_epochs=5, **overrides),
                                    workdir)
  before, after = untrained["test"]["test"], result["test"]["test"]
  print("untrained", before, "trained", after)
  assert after["ciou"] >= before["ciou"] + 0.2
  assert after["auc"] >= before["auc"] + 0.1
  # Reports the README promises.
  for name in ("metrics.json", "success_curve.png", "overlays.png"):
    assert os.path.getsize(os.path.join(workdir, "eval", "test", name)) > 0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  val_aucs = {r["step"]: r["auc"] for r in records if r["split"] == "validation"}
  assert len(val_aucs) == 5
  # The best validation epoch is kept apart from the last N checkpoints.
  from soundloc_jax import checkpointing
  best = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints_best"))
  assert best.all_steps() == [max(val_aucs, key=val_aucs.get)]
  best.close()
  assert any(r.get("teacher") for r in records if r["split"] == "train")
  assert len(os.listdir(os.path.join(workdir, "overlays"))) == 5


def _run_main(*args, env=None):
  return subprocess.run([sys.executable, "-m", "soundloc_jax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, **(env or {})})


def test_unknown_config_key_is_a_one_line_error(tmp_path):
  proc = _run_main("--config=configs/iterative.py", f"--workdir={tmp_path}",
                   "--config.method.tua=0.1")
  assert proc.returncode != 0
  assert "tua" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_unknown_preset_is_a_clear_error(tmp_path):
  proc = _run_main("--config=configs/iterative.py:flicker_10k", f"--workdir={tmp_path}")
  assert proc.returncode != 0
  assert "flicker_10k" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_dataset_is_a_one_line_error(tmp_path):
  proc = _run_main("--config=configs/iterative.py", f"--workdir={tmp_path / 'w'}",
                   f"--config.dataset.data_dir={tmp_path / 'nothing_here'}",
                   "--config.dataset.build_if_missing=False")
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "av_digits" in lines[0] and "tfds_build" in lines[0]
  assert "Traceback" not in proc.stderr


def test_ablation_presets_parse():
  for row, flags in iterative.ABLATIONS.items():
    c = iterative.get_config(f"ablation={row}")
    assert (c.method.use_itr, c.method.use_intra, c.method.use_inter) == flags
  with pytest.raises(ValueError, match="unknown ablation"):
    iterative.get_config("ablation=nope")


def test_audio_front_end_must_match_the_dataset(demo_data_dir, tmp_path):
  config = tiny_config(demo_data_dir, **{"audio.n_mels": 32})
  with pytest.raises(errors.DatasetError, match="n_mels"):
    train.train_and_evaluate(config, str(tmp_path))


def test_nonfinite_step_is_recorded_and_skip_mode_drops_the_update():
  config = tiny_config("", batch_size=8)
  optimizer = train_state.make_optimizer(config)
  bad = dict(_random_batch(config))
  bad["spectrogram"] = bad["spectrogram"].at[0, 0, 0].set(jnp.nan)
  for skip in (False, True):
    graphdef, state = train_state.create_train_state(config, optimizer)
    step = train.make_train_step(graphdef, methods.get("icl"), config.method, optimizer,
                                 teacher_active=False, skip_nonfinite=skip)
    state, _ = step(state, _random_batch(config, seed=1))
    before = jax.tree.map(np.asarray, (state["params"], state["opt_state"]))
    state, metrics = step(state, bad)
    assert not np.isfinite(float(metrics["loss"]))
    assert int(state["nonfinite_step"]) == 2
    assert int(state["skipped_steps"]) == (1 if skip else 0)
    if skip:
      _assert_trees_equal(before, (state["params"], state["opt_state"]))
      state, metrics = step(state, _random_batch(config, seed=2))  # training goes on
      assert np.isfinite(float(metrics["loss"]))
    else:
      assert not all(np.all(np.isfinite(p)) for p in jax.tree.leaves(state["params"]))


def test_nonfinite_loss_stops_without_saving_over_a_good_checkpoint(demo_data_dir, tmp_path,
                                                                   monkeypatch):
  calls = {"n": 0}
  original = train.distributed.global_batch

  def poisoned(batch, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 3:  # the batch of step 3
      batch = dict(batch, spectrogram=np.full_like(batch["spectrogram"], np.nan))
    return original(batch, *args, **kwargs)

  monkeypatch.setattr(train.distributed, "global_batch", poisoned)
  config = tiny_config(demo_data_dir, max_steps=6, log_every_steps=5,
                       **{"checkpoint.every_steps": 2})
  with pytest.raises(errors.TrainingError, match=r"at step 3 .*last good checkpoint is step 2"):
    train.train_and_evaluate(config, str(tmp_path))
  from soundloc_jax import checkpointing
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.all_steps() == [2]
  ckpt.close()


def test_bfloat16_training_stays_finite_and_near_float32(demo_data_dir, tmp_path):
  """Mixed precision (bf16 compute, f32 params/loss): 8 ICL steps (6 per
  epoch, the last 2 with the teacher) against float32; the 1,000-step run is
  in benchmarks/RESULTS.md."""
  losses = {}
  for dtype in ("float32", "bfloat16"):
    c = tiny_config(demo_data_dir, max_steps=8, log_every_steps=1,
                    **{"model.compute_dtype": dtype, "batch_size": 128, "num_epochs": 2})
    train.train_and_evaluate(c, str(tmp_path / dtype))
    with open(tmp_path / dtype / "metrics.jsonl") as f:
      losses[dtype] = np.asarray([r["loss"] for r in map(json.loads, f) if r["split"] == "train"])
  assert losses["bfloat16"].shape == (8,) and np.all(np.isfinite(losses["bfloat16"]))
  # Eq. 3 steps track float32 closely (measured <= 0.7% apart). The teacher
  # steps are only required finite: Eq. 7's pseudo-labels threshold the
  # teacher map, so bf16 rounding moves patches across delta_v (measured
  # 3.68 vs 4.32 at step 8; the 1,000-step bf16 run still learns).
  np.testing.assert_allclose(losses["bfloat16"][:6], losses["float32"][:6], rtol=0.02)
  assert not np.array_equal(losses["bfloat16"], losses["float32"])  # bf16 really was used


@pytest.mark.parametrize("config_file,arg", [("lvs", "variant=full"), ("lvs", "variant=vanilla"),
                                             ("ezvsl", "")])
def test_baselines_train_through_the_same_loop(demo_data_dir, tmp_path, config_file, arg):
  c = importlib.import_module(f"soundloc_jax.configs.{config_file}").get_config(arg)
  c.dataset.data_dir = demo_data_dir
  c.model.width, c.batch_size, c.max_steps, c.eval.batch_size = 4, 32, 3, 64
  result = train.train_and_evaluate(c, str(tmp_path))
  assert result["validation"] == {}  # stopped before the first epoch end
  with open(tmp_path / "metrics.jsonl") as f:
    losses_seen = [json.loads(line)["loss"] for line in f]
  assert losses_seen and all(np.isfinite(losses_seen))


def test_init_from_starts_both_streams_from_another_run(demo_data_dir, tmp_path):
  """model.init_from: weights and BatchNorm statistics of another run's latest
  checkpoint (e.g. the baseline HardPos mined with), fresh optimizer and step;
  other model settings are an error naming the field; a resumed run no longer
  needs the source."""
  import shutil

  import soundloc_jax
  from soundloc_jax.errors import ConfigError
  from soundloc_jax.errors import WorkdirError
  source = str(tmp_path / "source")
  train.train_and_evaluate(tiny_config(demo_data_dir, max_steps=2), source)
  trained = soundloc_jax.load(source)
  config = tiny_config(demo_data_dir, max_steps=2, **{"model.init_from": source})
  _, state = train_state.create_train_state(config, train_state.make_optimizer(config))
  _, fresh = train_state.create_train_state(tiny_config(demo_data_dir), train_state.make_optimizer(config))
  for key, want in (("params", trained.params), ("batch_stats", trained.batch_stats),
                    ("teacher_params", trained.params)):
    jax.tree.map(np.testing.assert_array_equal, state[key], want)
  assert int(state["step"]) == 0
  jax.tree.map(np.testing.assert_array_equal, state["opt_state"], fresh["opt_state"])
  assert not np.array_equal(state["params"]["audio"]["conv1"]["kernel"],
                            fresh["params"]["audio"]["conv1"]["kernel"])

  other = tiny_config(demo_data_dir, **{"model.init_from": source, "model.width": 6})
  with pytest.raises(ConfigError, match=r"init_from=.*source.*model\.width: 4 there, 6 here"):
    train_state.create_train_state(other, train_state.make_optimizer(other))
  other = tiny_config(demo_data_dir, **{"model.init_from": source, "audio.n_mels": 32})
  with pytest.raises(ConfigError, match=r"init_from=.*audio: .*'n_mels': 64.* there"):
    train_state.create_train_state(other, train_state.make_optimizer(other))
  other = tiny_config(demo_data_dir, **{"model.init_from": source, "model.init_visual": source})
  with pytest.raises(ConfigError, match="init_visual and config.model.init_from are both set"):
    train_state.create_train_state(other, train_state.make_optimizer(other))
  other = tiny_config(demo_data_dir, **{"model.init_from": str(tmp_path / "nowhere")})
  with pytest.raises(WorkdirError, match="nowhere.*config.json not found"):
    train_state.create_train_state(other, train_state.make_optimizer(other))

  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  shutil.rmtree(source)
  config.max_steps = 4  # resumable key: the same run goes on without the source
  train.train_and_evaluate(config, workdir)
  assert soundloc_jax.load(workdir).step == 4


def test_audio_mismatch_lists_every_differing_key(demo_data_dir):
  """Keys the configured front end does not read differ too, and so does a
  missing one: a log_mel config against an lvs_psd dataset (and back)."""
  from soundloc_jax import audio, data
  from soundloc_jax.configs import default
  config_audio = default.audio_config(audio.DEMO)  # log_mel
  config_audio.noverlap = 300  # not read by log_mel; the record's is 353
  assert audio.differing_keys(audio.params_dict(audio.LVS_TRAIN), config_audio) == [
      "kind", "clip_seconds", "noverlap", "n_fft", "hop_length", "n_mels"]
  assert audio.differing_keys(audio.params_dict(audio.DEMO), default.audio_config(audio.DEMO)) == []
  # The demo dataset (log_mel) with an lvs_psd config: one error naming all.
  config = tiny_config(demo_data_dir, **{"audio.kind": "lvs_psd"})
  name, data_dir = data.prepare_data(config)
  with pytest.raises(errors.DatasetError, match=r"differs in kind, nperseg, noverlap "):
    data.check_audio_matches(name, data_dir, config)


def test_zero_epochs_saves_the_untrained_model_as_step_0(demo_data_dir, tmp_path):
  import soundloc_jax
  config = tiny_config(demo_data_dir, num_epochs=0)
  result = train.train_and_evaluate(config, str(tmp_path))
  untrained = soundloc_jax.load(str(tmp_path))
  assert untrained.step == 0
  _, fresh = train_state.create_model_state(config)
  _assert_trees_equal(untrained.params, fresh["params"])
  assert evaluate.evaluate_checkpoint(config, str(tmp_path)) == result["test"]


def test_learning_rate_schedules_and_warmup():
  config = tiny_config("")
  constant = train_state.learning_rate_schedule(config, 100)
  assert [float(constant(s)) for s in (0, 50, 99)] == [config.optimizer.learning_rate] * 3
  lr = config.optimizer.learning_rate = 0.1
  config.optimizer.schedule, config.optimizer.warmup_steps = "cosine", 10
  cosine = train_state.learning_rate_schedule(config, 110)
  # Linear warmup from 0 over 10 steps, then half a cosine over the other 100,
  # reaching 0 when the last step is done.
  np.testing.assert_allclose([float(cosine(s)) for s in (0, 5, 10, 35, 60, 85, 110)],
                             [0, lr / 2, lr, lr * (1 + np.cos(np.pi / 4)) / 2, lr / 2,
                              lr * (1 + np.cos(3 * np.pi / 4)) / 2, 0], atol=1e-7)
  config.optimizer.schedule = "linear"
  with pytest.raises(errors.ConfigError, match="optimizer.schedule: unknown schedule 'linear'"):
    train_state.make_optimizer(config, 110)


def test_the_optimizer_follows_the_schedule_and_the_rate_is_logged(demo_data_dir, tmp_path):
  """With a warmup from 0 the first update changes nothing and the second does;
  each train record holds the rate its step used."""
  config = tiny_config(demo_data_dir, max_steps=4, log_every_steps=1,
                       **{"optimizer.schedule": "cosine", "optimizer.warmup_steps": 2})
  total = (768 // 32) * config.num_epochs
  optimizer = train_state.make_optimizer(config, total)
  graphdef, state = train_state.create_train_state(config, optimizer)
  step = train.make_train_step(graphdef, methods.get("icl"), config.method, optimizer,
                               teacher_active=False)
  init = jax.tree.map(np.asarray, state["params"])
  state, _ = step(state, _random_batch(config, seed=0))
  _assert_trees_equal(init, state["params"])
  after_one = jax.tree.map(np.asarray, state["params"])
  state, _ = step(state, _random_batch(config, seed=1))
  assert any(jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)),
                                          after_one, state["params"])))
  train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    logged = [r["learning_rate"] for r in map(json.loads, f) if r["split"] == "train"]
  schedule = train_state.learning_rate_schedule(config, total)
  np.testing.assert_allclose(logged, [float(schedule(s)) for s in range(4)], rtol=1e-6)
  assert logged[0] == 0.0 and logged[2] == pytest.approx(config.optimizer.learning_rate)
