"""Datasets of a run: where they live, which TFDS name to read, building the
demo on first use, opening splits, and checking them against the config.

`prepare_data(config)` -> `(name, data_dir)`: `config.dataset.data_dir` (""
= $SOUNDLOC_DATA_DIR or ~/tensorflow_datasets) and the TFDS name, the demo's
config made explicit (`av_digits` -> `av_digits/full`; any dataset with
configs built in data_dir likewise, `explicit_config`) and the demo built
when missing (`dataset.build_if_missing`; one process builds, the others
wait). `open_source(name, split, data_dir)` is the split as a random-access
`tfds.data_source` (array_record; `input_pipeline` reads it with grain), or a
DatasetError naming the build command. `check_audio_matches` refuses a
config whose audio front end is not the one the dataset was built with;
`dataset_fingerprint` identifies the data a run used (run_info.json), and
`train_batches` the training stream of a run's steps.
"""

from __future__ import annotations

import hashlib
import os

import jax
from absl import logging

from soundloc_jax import audio, distributed
from soundloc_jax.errors import DatasetError


def resolve_data_dir(config) -> str:
  if config.dataset.data_dir:
    return os.path.expanduser(config.dataset.data_dir)
  from soundloc_jax import demo_data
  return demo_data.default_data_dir()


def built_configs(name: str, data_dir: str) -> tuple[list[str], str | None]:
  """The builder configs of dataset `name` (no config part) built in
  `data_dir`, sorted, and the default TFDS reads for the bare name (what the
  last build recorded in `<data_dir>/<name>/.config/metadata.json`, None if
  none); `([], None)` for a dataset without configs or not built there."""
  from etils import epath
  from tensorflow_datasets.core import dataset_builder, utils
  root = epath.Path(data_dir) / name
  if not (root / ".config").exists():
    return [], None
  configs = sorted(d.name for d in root.iterdir()
                   if d.is_dir() and not d.name.startswith(".")
                   and not utils.Version.is_valid(d.name))
  return configs, dataset_builder.load_default_config_name(root)


def explicit_config(name: str, data_dir: str) -> str:
  """`name` with its builder config named: a bare name becomes `name/<config>`
  when the dataset has configs built in `data_dir`, so that every split of a
  run (train, validation, test, read minutes apart) comes from the same one.
  TFDS reads a bare name as the default recorded by the *last* build of any
  config, so building a variant would silently switch what a bare name
  reads; with several configs built the one read is logged, and an error
  names them when none is recorded. Other names are returned unchanged."""
  if "/" in name:
    return name
  configs, default = built_configs(name, data_dir)
  if not configs:
    return name
  if default not in configs:
    if len(configs) > 1:
      raise DatasetError(
          f"dataset {name!r} has configs {', '.join(configs)} in data_dir {data_dir!r} and "
          f"none is recorded as its default; name one, e.g. --config.dataset.name={name}/"
          f"{configs[0]}")
    default = configs[0]
  if len(configs) > 1:
    logging.warning("dataset %r has configs %s built in %s; reading %s/%s (the default the "
                    "last build recorded); name another with --config.dataset.name=%s/<config>",
                    name, ", ".join(configs), data_dir, name, default, name)
  return f"{name}/{default}"


def resolve_dataset(name: str, data_dir: str, build_if_missing: bool) -> str:
  """The TFDS name to read, its config made explicit (`explicit_config`); the
  demo dataset is built on first use."""
  if name.split("/")[0] != "av_digits":
    return explicit_config(name, data_dir)
  from soundloc_jax import demo_data
  name = demo_data.dataset_name(name)
  if build_if_missing:
    # One process builds; the others wait for it instead of racing on the files.
    if distributed.is_primary():
      demo_data.ensure_built(data_dir, name)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"dataset {name} ready")
  return name


def prepare_data(config) -> tuple[str, str]:
  """`(dataset name, data_dir)` of the training dataset."""
  data_dir = resolve_data_dir(config)
  return resolve_dataset(config.dataset.name, data_dir, config.dataset.build_if_missing), data_dir


def open_source(name: str, split: str, data_dir: str, encoded_images: bool = False):
  """`tfds.data_source` with an error that says how to build what is missing.
  With `encoded_images` an encoded `image` feature is returned as its bytes
  (the training pipeline decodes it straight into its crops,
  `input_pipeline.open_frame`)."""
  import tensorflow_datasets as tfds
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    # Only an Image feature is encoded (the demo stores a raw uint8 Tensor).
    features = source.dataset_info.features
    if encoded_images and "image" in features and isinstance(features["image"],
                                                             tfds.features.Image):
      source = tfds.data_source(name, split=split, data_dir=data_dir,
                                decoders={"image": tfds.decode.SkipDecoding()})
    return source
  except Exception as e:  # TFDS raises several types for "not prepared"
    base, _, builder_config = name.partition("/")
    config_flag = f" --config={builder_config}" if builder_config else ""
    raise DatasetError(
        f"dataset {name!r} split {split!r} is not available in data_dir {data_dir!r} "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Build it with "
        f"`python -m soundloc_jax.tfds_build data_builders/{base}{config_flag} "
        f"--data_dir={data_dir}` (add --manual_dir=... for datasets made from your own files; "
        f"data_builders/{base}/README.md gives their layout).") from e


def dataset_fingerprint(name: str, data_dir: str) -> dict:
  """Name, version, folder, split sizes and a hash of dataset_info.json."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(name, data_dir=data_dir)
  info_json = os.path.join(builder.data_dir, "dataset_info.json")
  digest = ""
  if os.path.exists(info_json):
    with open(info_json, "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()[:16]
  return {"name": name, "version": str(builder.info.version), "data_dir": builder.data_dir,
          "splits": {k: v.num_examples for k, v in builder.info.splits.items()},
          "dataset_info_sha256": digest}


def check_audio_matches(name: str, data_dir: str, config) -> None:
  """The dataset's recorded front end must equal config.audio (else the model
  would train on spectrograms it will never see at inference); the error
  lists every key that differs (`audio.differing_keys`)."""
  import tensorflow_datasets as tfds
  metadata = tfds.builder(name, data_dir=data_dir).info.metadata or {}
  recorded = metadata.get("audio")
  if recorded is None:
    return
  recorded = dict(recorded)
  differ = audio.differing_keys(recorded, config.audio)
  if differ:
    ours = {k: config.audio[k] if k in config.audio else None for k in differ}
    raise DatasetError(
        f"dataset {name!r} was built with audio front end {recorded}, but config.audio "
        f"differs in {', '.join(differ)} ({ours}); set --config.audio.* to match or "
        "rebuild the dataset")


def train_batches(config, source, start_step: int, stop_step: int, needs_neighbours: bool,
                  warn=logging.warning):
  """This process's batches of global steps `start_step..stop_step-1` of the
  training split `source` (`input_pipeline.train_iterator`); a method that
  needs neighbours (HardPos) gets the neighbour table `config.method` asks
  for (`methods.neighbours.from_config`, which `warn`s when K is clipped)."""
  from soundloc_jax import input_pipeline
  from soundloc_jax.methods import neighbours
  ds_cfg = config.dataset
  table = (neighbours.from_config(config.method, source, config.seed, warn)
           if needs_neighbours else None)
  batches, _ = input_pipeline.train_iterator(
      source, global_batch=config.batch_size, seed=config.seed, start_step=start_step,
      num_steps=stop_step, image_size=ds_cfg.image_size, augment=ds_cfg.augment,
      num_threads=ds_cfg.num_workers, worker_processes=ds_cfg.worker_processes,
      process_index=jax.process_index(),
      process_count=jax.process_count(), neighbours=table)
  return batches
