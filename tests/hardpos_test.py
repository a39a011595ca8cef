"""HardPos end to end: neighbour batches, Random HP, mining command, resume, errors.

Pipeline tests run on a small in-memory source (a list of example dicts, as
`tfds.data_source` returns them) with an independently computed expectation;
the mining and training tests use the suite's reduced demo build (768 train).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import soundloc_jax
from soundloc_jax.configs import hard_positive, lvs
from soundloc_jax import data, input_pipeline, mine, train
from soundloc_jax import state as train_state
from soundloc_jax.errors import ConfigError, DatasetError, UserError
from soundloc_jax.methods import mining, neighbours
from tests.helpers import neighbour_demo_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, K, GLOBAL_BATCH = 40, 5, 8


def fake_source(n=N, seed=0):
  rng = np.random.default_rng(seed)
  return [{"image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
           "spectrogram": rng.normal(size=(4, 5)).astype(np.float32),
           "id": f"clip_{i:03d}".encode()} for i in range(n)]


def mined_table(source, k=K):
  rng = np.random.default_rng(1)
  ids = [ex["id"].decode() for ex in source]
  result = mining.mine_neighbours(ids, rng.normal(size=(len(ids), 6)),
                                  rng.normal(size=(len(ids), 6)), k, block_size=16)
  return neighbours.MinedNeighbours(result, k, source_path="mem.npz"), result


def batches(source, table, start_step=0, num_steps=6, process_index=0, process_count=1, seed=3):
  it, _ = input_pipeline.train_iterator(source, global_batch=GLOBAL_BATCH, seed=seed,
                                        start_step=start_step, num_steps=num_steps, image_size=8,
                                        augment=False, process_index=process_index,
                                        process_count=process_count, neighbours=table)
  return list(it)


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


@pytest.mark.parametrize("kind", ["mined", "random"])
def test_neighbour_batches(kind):
  source = fake_source()
  table = mined_table(source)[0] if kind == "mined" else neighbours.RandomNeighbours(N, K, seed=3)
  run = batches(source, table)
  assert len(run) == 6
  for step, batch in enumerate(run):
    assert batch["image"].shape == (GLOBAL_BATCH, 2, 8, 8, 3)
    assert batch["spectrogram"].shape == (GLOBAL_BATCH, 2, 4, 5)
    assert batch["negative_mask"].shape == (GLOBAL_BATCH, GLOBAL_BATCH)
    assert batch["negative_mask"].dtype == bool
    base = batch["index"]
    for r in range(GLOBAL_BATCH):
      i = int(base[r])
      audio_set, visual_set = set(table.audio(i).tolist()), set(table.visual(i).tolist())
      a, v = (int(x) for x in batch["neighbour_index"][r])
      # Only ever from the row's own lists, never itself.
      assert a in audio_set and v in visual_set and i not in (a, v)
      # The right halves of the right examples.
      np.testing.assert_array_equal(batch["image"][r, 0], source[i]["image"])
      np.testing.assert_array_equal(batch["image"][r, 1], source[v]["image"])
      np.testing.assert_array_equal(batch["spectrogram"][r, 0], source[i]["spectrogram"])
      np.testing.assert_array_equal(batch["spectrogram"][r, 1], source[a]["spectrogram"])
      # Negatives: exactly the batch's base examples outside both sets and not i.
      expected = [int(l) != i and int(l) not in audio_set | visual_set for l in base]
      assert batch["negative_mask"][r].tolist() == expected, (step, r)
      # ICL x HardPos's mined Eq. 6: the batch's base examples in the audio set.
      assert batch["audio_neighbour_mask"][r].tolist() == [int(l) in audio_set for l in base]
  # The mask really excludes something and keeps something.
  masks = np.stack([b["negative_mask"] for b in run])
  assert 0 < masks.mean() < 1 - 1 / GLOBAL_BATCH

  # A pure function of (seed, position): starting at step 4 gives the same
  # batches 4 and 5, a fresh table of the same kind too; another seed differs.
  table2 = mined_table(source)[0] if kind == "mined" else neighbours.RandomNeighbours(N, K, seed=3)
  for a, b in zip(run[4:], batches(source, table2, start_step=4)):
    _assert_batches_equal(a, b)
  other = batches(source, table, seed=4)
  assert not np.array_equal(other[0]["neighbour_index"], run[0]["neighbour_index"])

  # Two processes: each reads its contiguous rows; together the single-process batch.
  halves = [batches(source, table, process_index=p, process_count=2) for p in range(2)]
  for whole, h0, h1 in zip(run, *halves):
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([h0[key], h1[key]]), whole[key], err_msg=key)


def test_random_neighbour_sets():
  table = neighbours.RandomNeighbours(50, 10, seed=0)
  seen = set()
  for i in range(50):
    for row in (table.audio(i), table.visual(i)):
      assert len(set(row.tolist())) == 10 and i not in row and row.min() >= 0 and row.max() < 50
      seen.update(row.tolist())
    assert not np.array_equal(np.sort(table.audio(i)), np.sort(table.visual(i)))
  assert seen == set(range(50))
  np.testing.assert_array_equal(table.audio(7), neighbours.RandomNeighbours(50, 10, 0).audio(7))
  assert not np.array_equal(table.audio(7), neighbours.RandomNeighbours(50, 10, 1).audio(7))


def test_bad_neighbour_files_name_the_file(tmp_path):
  source = fake_source()
  _, result = mined_table(source)
  config = hard_positive.get_config("").method
  config.num_neighbours = K
  with pytest.raises(ConfigError, match="neighbours_path is empty.*soundloc_jax.mine"):
    neighbours.from_config(config, source, 0)
  config.neighbours_path = str(tmp_path / "missing.npz")
  with pytest.raises(DatasetError, match="missing.npz does not exist"):
    neighbours.from_config(config, source, 0)
  garbage = tmp_path / "garbage.npz"
  garbage.write_bytes(b"not a zip file")
  config.neighbours_path = str(garbage)
  with pytest.raises(DatasetError, match="garbage.npz is not a readable"):
    neighbours.from_config(config, source, 0)
  # Ids of another split: caught at start-up.
  wrong = dict(result, ids=np.asarray([f"other_{i}" for i in range(N)]))
  mining.save_neighbours(tmp_path / "wrong.npz", wrong)
  config.neighbours_path = str(tmp_path / "wrong.npz")
  with pytest.raises(DatasetError, match="wrong.npz does not match the training split"):
    neighbours.from_config(config, source, 0)
  short = {key: (v[:N - 1] if getattr(v, "ndim", 0) else v) for key, v in result.items()}
  mining.save_neighbours(tmp_path / "short.npz", short)
  config.neighbours_path = str(tmp_path / "short.npz")
  with pytest.raises(DatasetError, match=f"short.npz lists {N - 1} examples"):
    neighbours.from_config(config, source, 0)
  # Two ids swapped: with N <= CHECKED_POSITIONS start-up compares every id.
  swapped_ids = result["ids"].copy()
  swapped_ids[[3, 4]] = swapped_ids[[4, 3]]
  mining.save_neighbours(tmp_path / "swapped.npz", dict(result, ids=swapped_ids))
  config.neighbours_path = str(tmp_path / "swapped.npz")
  with pytest.raises(DatasetError, match="swapped.npz does not match"):
    neighbours.from_config(config, source, 0)
  # On larger splits start-up samples positions; the pipeline checks every read.
  table = neighbours.MinedNeighbours(dict(result, ids=result["ids"][::-1]), K, "reversed.npz")
  with pytest.raises(DatasetError, match="reversed.npz does not match"):
    batches(source, table, num_steps=1)


# ---------------------------------------------------------------------------
# On the demo data: baseline -> mining -> HardPos
# ---------------------------------------------------------------------------

def demo_config(config, data_dir, log_every_steps=5, **overrides):
  return neighbour_demo_config(config, data_dir, log_every_steps=log_every_steps, **overrides)


@pytest.fixture(scope="module")
def baseline(demo_data_dir, tmp_path_factory):
  """A Vanilla-LVS run of 6 steps and its mined neighbours (K = 50)."""
  workdir = str(tmp_path_factory.mktemp("baseline"))
  train.train_and_evaluate(demo_config(lvs.get_config(",variant=vanilla"), demo_data_dir,
                                       max_steps=6), workdir)
  path = mine.mine(workdir, num_neighbours=50, batch_size=128, block_size=200)
  return workdir, path


def test_mining_equals_brute_force_argsort(baseline, demo_data_dir):
  workdir, path = baseline
  assert path == os.path.join(workdir, "neighbours.npz")
  result = mining.load_neighbours(path)
  from flax import nnx
  from soundloc_jax import inference
  model_source = inference.load(workdir)
  config = model_source.config
  name, data_dir = data.prepare_data(config)
  source = data.open_source(name, "train", data_dir)
  examples = [source[i] for i in range(len(source))]
  assert result["ids"].tolist() == [ex["id"].decode() for ex in examples]
  # Embeddings by a separate path: one eval-mode forward over the whole split.
  @jax.jit
  def forward(image, spectrogram):
    model = nnx.merge(model_source.graphdef, model_source.params, model_source.batch_stats)
    model.eval()
    return model(image, spectrogram)

  out = forward(np.stack([ex["image"] for ex in examples]),
                np.stack([np.asarray(ex["spectrogram"], np.float32) for ex in examples]))
  vectors = {"audio": np.asarray(out["audio_embedding"], np.float64),
             "visual": np.asarray(out["visual_features"], np.float64).mean(axis=(1, 2))}
  k = result["k"]
  for modality, emb in vectors.items():
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    scores = emb @ emb.T
    np.fill_diagonal(scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k + 1]
    ref = np.take_along_axis(scores, order, axis=1)
    got = result[f"{modality}_indices"]
    np.testing.assert_allclose(result[f"{modality}_scores"], ref[:, :k], atol=1e-5)
    # A valid exact top-k of the float64 scores, up to float32 rounding: sorted,
    # nothing left out scores higher, no duplicates; the same indices as the
    # brute-force argsort except where near-equal scores swap.
    chosen = np.take_along_axis(scores, got.astype(np.int64), axis=1)
    assert np.all(np.diff(chosen, axis=1) <= 1e-5)
    left_out = scores.copy()
    np.put_along_axis(left_out, got.astype(np.int64), -np.inf, axis=1)
    assert np.all(chosen[:, -1] >= left_out.max(axis=1) - 1e-5)
    assert all(len(set(row)) == k for row in got.tolist())
    same = got == order[:, :k]
    print(f"{modality}: {same.mean():.4f} of {got.size} indices equal the argsort's")
    assert same.mean() > 0.9
    np.testing.assert_allclose(chosen[~same], ref[:, :k][~same], atol=1e-5)
    assert not np.any(got == np.arange(len(got))[:, None])


def test_hardpos_resumed_run_equals_uninterrupted(baseline, demo_data_dir, tmp_path):
  _, path = baseline

  def config(max_steps):
    return demo_config(hard_positive.get_config(""), demo_data_dir, max_steps=max_steps,
                       **{"method.neighbours_path": path, "method.num_neighbours": 50})

  train.train_and_evaluate(config(8), str(tmp_path / "full"))
  for stop in (3, 8):  # stopped mid-epoch, then resumed with the same command
    train.train_and_evaluate(config(stop), str(tmp_path / "resumed"))
  from soundloc_jax import checkpointing
  states = []
  for run in ("full", "resumed"):
    ckpt = checkpointing.Checkpointer(str(tmp_path / run / "checkpoints"))
    _, abstract = train_state.create_train_state(config(8), train_state.make_optimizer(config(8)))
    states.append(ckpt.restore(ckpt.latest_step(), abstract))
    ckpt.close()
  (a, _), (b, _) = states
  assert int(a["step"]) == int(b["step"]) == 8
  for key in ("params", "batch_stats", "opt_state"):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                 a[key], b[key])
  with open(tmp_path / "full" / "metrics.jsonl") as f:
    assert '"negatives_per_row"' in f.read()


def test_workdir_from_before_method_positives_still_resumes(baseline, demo_data_dir, tmp_path):
  """The resume bug of issue 16: a HardPos workdir recorded before
  `method.positives` existed was refused, because the defaults it was checked
  against (configs/default.py) had no method fields. At its default the field
  is not a change; set otherwise, it is one, named."""
  _, path = baseline

  def config(max_steps, **overrides):
    return demo_config(hard_positive.get_config(""), demo_data_dir, max_steps=max_steps,
                       **{"method.neighbours_path": path, "method.num_neighbours": 50,
                          **overrides})

  train.train_and_evaluate(config(2), str(tmp_path))
  recorded = json.loads((tmp_path / "config.json").read_text())
  del recorded["method"]["positives"]  # as written before the field existed
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  with pytest.raises(UserError, match=r"differs in: method\.positives\)"):
    train.train_and_evaluate(config(4, **{"method.positives": "ba"}), str(tmp_path))
  train.train_and_evaluate(config(4), str(tmp_path))
  assert json.loads((tmp_path / "config.json").read_text())["method"]["positives"] == "bavc"
  assert soundloc_jax.load(str(tmp_path)).step == 4


def test_mine_and_train_errors_are_one_line(demo_data_dir, tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    mine.mine(str(tmp_path / "no_such_run"))
  proc = subprocess.run(
      [sys.executable, "-m", "soundloc_jax.main", "--config=configs/hard_positive.py",
       f"--workdir={tmp_path / 'w'}", f"--config.dataset.data_dir={demo_data_dir}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "neighbours_path" in errors[0] and "soundloc_jax.mine" in errors[0]
  assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------
# Two simulated devices (a subprocess: the device count is fixed at JAX start)
# ---------------------------------------------------------------------------

def _two_device_main():
  """2 HardPos steps on a 2-device and a 1-device mesh of the same process."""
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  from soundloc_jax import distributed, methods
  distributed.enable_compilation_cache()
  assert jax.device_count() == 2, jax.devices()
  config = hard_positive.get_config("")
  config.model.width, config.batch_size, config.optimizer.name = 4, 8, "sgd"
  rng = np.random.default_rng(0)
  batches = [{"image": rng.integers(0, 256, (8, 2, 64, 64, 3), dtype=np.uint8),
              "spectrogram": rng.normal(size=(8, 2, 64, 63)).astype(np.float32),
              "flip": rng.random((8, 2)) < 0.5,
              "negative_mask": rng.random((8, 8)) < 0.6} for _ in range(2)]
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))
    optimizer = train_state.make_optimizer(config)
    graphdef, state = train_state.create_train_state(config, optimizer)
    state = jax.device_put(state, NamedSharding(mesh, P()))
    step = train.make_train_step(graphdef, methods.get("hardpos"), config.method, optimizer,
                                 False, mesh)
    losses = []
    for batch in batches:
      state, metrics = step(state, distributed.global_batch(
          batch, mesh, keys=input_pipeline.NEIGHBOUR_DEVICE_KEYS))
      losses.append(float(metrics["loss"]))
    results.append((losses, jax.tree.leaves(jax.device_get((state["params"],
                                                             state["batch_stats"])))))
  (loss_one, leaves_one), (loss_two, leaves_two) = results
  assert loss_one[0] != loss_one[1]
  np.testing.assert_allclose(loss_two, loss_one, rtol=1e-5)
  for a, b in zip(leaves_one, leaves_two):
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)
  print("two-device losses", loss_two, "one-device", loss_one)


def test_two_devices_match_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
  assert "two-device losses" in proc.stdout


if __name__ == "__main__":
  _two_device_main()
