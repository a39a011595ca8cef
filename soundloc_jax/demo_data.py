"""The embedded demo dataset `av_digits`: where it lives and building it on demand.

`av_digits` (see `soundloc_jax/data_builders/av_digits/av_digits_dataset_builder.py`) is
generated offline in seconds, so the demo and the tests build it on first use::

  from soundloc_jax import demo_data
  data_dir = demo_data.default_data_dir()      # $SOUNDLOC_DATA_DIR or ~/tensorflow_datasets
  demo_data.ensure_built(data_dir)             # no-op when already there
  src = tfds.data_source(demo_data.dataset_name(), split="train", data_dir=data_dir)

Reduced builds: with `SOUNDLOC_AV_DIGITS_SIZES=TRAIN,VALIDATION,TEST` (e.g.
`40,10,10`) set before the builder module is imported, the builder's config is
`small_TRAIN_VALIDATION_TEST` instead of `full` (a separate directory,
`<data_dir>/av_digits/<config>/1.0.0`), and `dataset_name()` names it.
Read with the explicit `dataset_name()` ("av_digits/full" normally): a bare
"av_digits" in a process that never imported the builder resolves to the
config built *last* in that data_dir.

The same dataset from the command line::

  python -m soundloc_jax.tfds_build data_builders/av_digits --data_dir=D
"""

from __future__ import annotations

import os

from absl import logging

DATA_DIR_ENV = "SOUNDLOC_DATA_DIR"
DEMO_NAME = "av_digits"


def default_data_dir() -> str:
  """`$SOUNDLOC_DATA_DIR` if set, else `~/tensorflow_datasets` (user-expanded)."""
  value = os.environ.get(DATA_DIR_ENV, "").strip()
  return os.path.expanduser(value or os.path.join("~", "tensorflow_datasets"))


def _builder_module():
  # Importing registers the `av_digits` builder with TFDS.
  from soundloc_jax.data_builders.av_digits import av_digits_dataset_builder
  return av_digits_dataset_builder


def dataset_name(name: str = DEMO_NAME) -> str:
  """`name` with its config made explicit, e.g. `"av_digits/full"`.

  The config follows `SOUNDLOC_AV_DIGITS_SIZES` as it is now
  (`small_40_10_10` for `40,10,10`). A name with a config is returned as is.
  """
  base, _, config = name.partition("/")
  if base != DEMO_NAME:
    raise ValueError(f"unknown demo dataset {name!r}; expected {DEMO_NAME!r}")
  if config:
    return name
  return f"{DEMO_NAME}/{_builder_module().default_config().name}"


def ensure_built(data_dir: str, name: str = DEMO_NAME) -> None:
  """Builds the demo dataset into `data_dir` (array_record) unless it is there.

  `name` is `"av_digits"` (config `full`, or `small_...` from
  `SOUNDLOC_AV_DIGITS_SIZES` read at call time) or `"av_digits/<config>"`
  with config `full` or `small_TRAIN_VALIDATION_TEST`.
  """
  import tensorflow_datasets as tfds
  data_dir = os.path.expanduser(str(data_dir))
  full = dataset_name(name)
  module = _builder_module()
  config = module.config_from_name(full.split("/", 1)[1].split(":")[0])
  # The class's own config object when it has one of that name (TFDS rejects a
  # different object with the same name); otherwise a custom config.
  config = module.Builder.builder_configs.get(config.name, config)
  builder = module.Builder(data_dir=data_dir, config=config, file_format="array_record")
  if builder.is_prepared():
    file_format = builder.info.file_format
    fmt = getattr(file_format, "value", file_format)
    if fmt != "array_record":
      raise RuntimeError(f"{builder.data_dir} holds {fmt} files; random access needs "
                         "array_record: delete it (or pick another data_dir) and rebuild")
    return
  sizes = builder.builder_config.sizes
  logging.info("soundloc_jax: building demo dataset %s (%d examples, generated offline, "
               "~10-30 s) into %s", full, sum(sizes.values()), builder.data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.path.join(data_dir, "manual")))
