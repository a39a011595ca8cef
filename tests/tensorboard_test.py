"""TensorBoard event files: what `tensorboard --logdir WORKDIR` shows is what
metrics.jsonl holds, read back with TensorBoard's own loader
(`EventAccumulator`, the reader behind `tensorboard --logdir`), across a
resumed run and a later `--mode=eval`."""

import json
import os
import shutil

import numpy as np
import pytest

from soundloc_jax import evaluate, train, workdir as workdir_lib
from tests.helpers import tiny_config

# tensorboard is in the [test] extra: the viewer, not needed for training.
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402


def _events(workdir):
  acc = event_accumulator.EventAccumulator(
      workdir, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
  acc.Reload()
  return acc


def _jsonl(workdir):
  """The last record per (split, step), as every reader of metrics.jsonl takes them."""
  last = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      last[(r["split"], r["step"])] = r
  return last


def _scalars(acc):
  """`{(tag, step): value}`: the last event per tag and step, as TensorBoard plots them."""
  out = {}
  for tag in acc.Tags()["scalars"]:
    for e in acc.Scalars(tag):
      out[(tag, e.step)] = e.value
  return out


def test_event_scalars_equal_the_jsonl_and_overlays_are_images(demo_data_dir, tmp_path):
  """2 epochs of 24 steps, stopped at step 28 (mid-epoch 1), then resumed from
  the epoch-0 checkpoint (step 24) as after a kill -9 that took the later one:
  TensorBoard hides what the first process logged after step 24 (the resumed
  process's `purge_step`), as the JSONL readers keep the resumed run's records."""
  workdir = str(tmp_path / "run")
  steps_per_epoch = 768 // 32
  first = tiny_config(demo_data_dir, num_epochs=2, max_steps=28, **{"checkpoint.every_steps": 0})
  assert "test" not in train.train_and_evaluate(first, workdir)  # stopped early: no test yet
  shutil.rmtree(os.path.join(workdir, "checkpoints", "28"))
  acc = _events(workdir)
  assert max(e.step for e in acc.Scalars("train/loss")) == 28  # logged before the "kill"

  config = tiny_config(demo_data_dir, num_epochs=2, **{"checkpoint.every_steps": 0})
  result = train.train_and_evaluate(config, workdir)
  events = [n for n in os.listdir(workdir) if ".tfevents." in n]
  assert len(events) == 2  # the resumed process appended a file of its own

  acc = _events(workdir)
  jsonl = _jsonl(workdir)
  scalars = _scalars(acc)
  expected = {}
  for (split, step), record in jsonl.items():
    for key, value in record.items():
      if key not in ("step", "split") and isinstance(value, (int, float)):
        expected[(workdir_lib.event_tag(split, key), step)] = float(np.float32(value))
  assert scalars == expected  # every value, and nothing else (the purged steps are gone)

  tags = set(acc.Tags()["scalars"])
  for tag in ("train/loss", "train/learning_rate", "train/samples_per_s", "train/grad_norm",
              "validation/ciou", "validation/auc", "validation/r1", "test/ciou", "test/auc",
              "test/ciou_median", "test/auc_median"):
    assert tag in tags, tag
  # ICL's aux metrics of the loss come through as train/<name> too.
  aux = {k for (split, _), r in jsonl.items() if split == "train" for k in r} - {
      "step", "split", "loss", "grad_norm", "samples_per_s", "learning_rate", "epoch", "teacher"}
  assert aux and all(f"train/{k}" in tags for k in aux)
  # The resumed steps replaced the first process's, not added to them.
  train_steps = [e.step for e in acc.Scalars("train/loss")]
  assert train_steps == sorted(set(train_steps)) == sorted(
      s for (split, s) in jsonl if split == "train")
  assert [e.value for e in acc.Scalars("test/ciou")] == [
      pytest.approx(result["test"]["test"]["ciou"], rel=1e-6)]

  # The overlay grid of each epoch, as the PNG the run wrote.
  images = acc.Images("validation/overlays")
  assert [im.step for im in images] == [steps_per_epoch, 2 * steps_per_epoch]
  for epoch, im in enumerate(images):
    with open(os.path.join(workdir, "overlays", f"validation_epoch_{epoch:03d}.png"), "rb") as f:
      assert im.encoded_image_string == f.read()
    assert im.width > 100 and im.height > 100

  # --mode=eval appends its scores at the step it scored, in a file of its own.
  evaluate.evaluate_checkpoint(config, workdir)
  acc = _events(workdir)
  assert len([n for n in os.listdir(workdir) if ".tfevents." in n]) == 3
  assert [e.step for e in acc.Scalars("test/auc")] == [2 * steps_per_epoch] * 2
  assert len(acc.Scalars("train/loss")) == len(train_steps)  # nothing purged by eval


def test_event_file_names_sort_in_writing_order(tmp_path):
  """A second writer within the same second still sorts after the first, so
  TensorBoard applies a resumed run's purge to the earlier file."""
  a = workdir_lib.EventsFile(str(tmp_path))
  b = workdir_lib.EventsFile(str(tmp_path), purge_step=3)
  a.close()
  b.close()
  assert sorted(os.listdir(tmp_path)) == [os.path.basename(a.path), os.path.basename(b.path)]
  assert a.path != b.path


def test_event_tags_are_legal_and_bools_are_numbers():
  fields = workdir_lib.scalar_fields({"step": 4, "split": "vggss:test", "ciou": 0.5,
                                      "teacher": True, "note": "text", "curve": [1, 2]})
  assert fields == {"vggss_test/ciou": 0.5, "vggss_test/teacher": 1.0}
