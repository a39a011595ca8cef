"""`tfds build` without TensorFlow.

The `tfds` command-line tool cannot start without TensorFlow (its `main`
imports the `convert_format` and `build_croissant` commands, which need TF
and `mlcroissant`), but the `build` command itself does not. This entry point
runs TFDS's own `tensorflow_datasets.scripts.cli.build.Args` through
`cli_utils.make_flags_parser`, so it accepts exactly the flags of
`tfds build` (see `--help`), with one difference: `--file_format` defaults
to `array_record` (readable with `tfds.data_source` / grain, no TF needed).

Usage (from the repository root, or from anywhere after `pip install`: a
`data_builders/NAME` folder that does not exist relative to the working
directory is the packaged `soundloc_jax/data_builders/NAME`)::

  # A dataset folder (TFDS layout: <name>/<name>_dataset_builder.py):
  python -m soundloc_jax.tfds_build data_builders/av_digits --data_dir=$HOME/tensorflow_datasets

  # Datasets that need manually downloaded files:
  python -m soundloc_jax.tfds_build data_builders/vggsound_ss \\
      --data_dir=D --manual_dir=M [--config=NAME] [--overwrite]

  # A registered name: the project's builders (soundloc_jax.data_builders.*) are imported
  # first, so `av_digits` works too; others need `--imports=module.path`.
  python -m soundloc_jax.tfds_build av_digits --data_dir=D

Useful flags (all from `tfds build`): `--data_dir`, `--download_dir`,
`--manual_dir`, `--add_name_to_manual_dir`, `--config`/`--config_idx`,
`--overwrite`, `--max_examples_per_split=N`, `--num_shards`,
`--max_shard_size_mb`, `--file_format={array_record,tfrecord,...}`,
`--beam_pipeline_options=...`, `--imports=...`. `--data_dir` defaults to
`$TFDS_DATA_DIR` or `~/tensorflow_datasets`.

The equivalent Python API::

  Builder(data_dir=D, file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=M))
"""

from __future__ import annotations

import dataclasses
import importlib
import logging as python_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import simple_parsing
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.scripts.cli import build
from tensorflow_datasets.scripts.cli import cli_utils

DEFAULT_FILE_FORMAT = "array_record"

# Builder modules of this project, imported (registered) so that they can be
# built by name as well as by folder.
PROJECT_BUILDER_MODULES = (
    "soundloc_jax.data_builders.av_digits.av_digits_dataset_builder",
    "soundloc_jax.data_builders.flickr_soundnet.flickr_soundnet_dataset_builder",
    "soundloc_jax.data_builders.folder.folder_dataset_builder",
    "soundloc_jax.data_builders.music_synthetic.music_synthetic_dataset_builder",
    "soundloc_jax.data_builders.stamps.stamps_dataset_builder",
    "soundloc_jax.data_builders.vggsound.vggsound_dataset_builder",
    "soundloc_jax.data_builders.vggss.vggss_dataset_builder",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerationOptions(cli_utils.GenerationOptions):
  """`tfds build` generation options, with `--file_format` defaulting to array_record."""

  file_format: str | None = simple_parsing.choice(
      *(f.value for f in file_adapters.FileFormat),
      default=DEFAULT_FILE_FORMAT,
  )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Args(build.Args):
  """Download and prepare datasets (`tfds build`, no TensorFlow needed)."""

  generation: GenerationOptions = simple_parsing.field(
      default_factory=GenerationOptions
  )
  """Generation options."""


parse_flags = cli_utils.make_flags_parser(
    Args, description="tfds build, without TensorFlow (soundloc_jax)."
)


def _import_project_builders() -> None:
  for module in PROJECT_BUILDER_MODULES:
    try:
      importlib.import_module(module)
    except ImportError as e:  # e.g. not run from the repository root
      logging.debug("Could not import %s: %s", module, e)


def main(args: Args) -> None:
  """Same set-up as `tensorflow_datasets.scripts.cli.main.main`, then build."""
  tfds.core.visibility.set_availables([
      tfds.core.visibility.DatasetType.TFDS_PUBLIC,
      tfds.core.visibility.DatasetType.COMMUNITY_PUBLIC,
  ])
  if not flags.FLAGS.is_parsed() or (
      not flags.FLAGS.logtostderr and not flags.FLAGS.alsologtostderr):
    formatter = python_logging.Formatter("{levelname}[{filename}]: {message}", style="{")
    logging.use_python_logging(quiet=True)
    logging.set_verbosity(logging.INFO)
    handler = logging.get_absl_handler().python_handler
    handler.setFormatter(formatter)
    handler.setStream(tfds.core.utils.tqdm_utils.TqdmStream())
  if not args.generation.imports:
    _import_project_builders()
  args.execute()


def packaged_builder_path(arg: str) -> str:
  """A `data_builders/NAME...` argument that does not exist relative to the
  working directory, as the packaged folder; anything else unchanged."""
  if arg.startswith("-") or os.path.exists(arg) or not arg.startswith("data_builders/"):
    return arg
  packaged = os.path.join(os.path.dirname(os.path.abspath(__file__)), arg)
  return packaged if os.path.exists(packaged) else arg


def launch_cli(argv: list[str] | None = None) -> None:
  """Parses `argv` (default `sys.argv`) as `tfds build` flags and builds."""
  argv = list(sys.argv if argv is None else argv)
  sys.argv = argv[:1] + [packaged_builder_path(a) for a in argv[1:]]
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  launch_cli()
