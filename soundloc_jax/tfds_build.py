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

Errors a user can cause print one line, `error: ...`, naming the file, folder
or key, and exit with code 2 (as `soundloc_jax.main` and `localize` do): an
unknown builder (no such folder, no such registered name), an unknown
`--config`, a missing or empty `manual_dir` of a builder that needs one, and
every `errors.UserError` of a build (a missing, empty or corrupt media file,
a bad annotation file, a manual_dir without the builder's layout). They are
checked before anything is written where possible (`check_args`). Anything
else is a bug and keeps its traceback.

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

from soundloc_jax.errors import UserError

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


class BuildError(UserError):
  """A `tfds_build` argument that names no builder, config or manual_dir."""


def _builder_class(dataset: str, has_imports: bool):
  """`(builder class, kwargs parsed from the name)` of a dataset argument, as
  `tfds build` resolves it (a folder or script, else a registered name)."""
  try:
    # TFDS's own resolution, so that what passes here is what it builds.
    return build._get_builder_cls_and_kwargs(dataset, has_imports=has_imports)  # pylint: disable=protected-access
  except (FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as e:
    known = ", ".join(f"data_builders/{m.split('.')[2]}" for m in PROJECT_BUILDER_MODULES)
    what = (f"no such builder folder or script {dataset!r}" if isinstance(e, FileNotFoundError)
            or os.sep in dataset.rstrip(os.sep) else f"unknown dataset builder {dataset!r}")
    raise BuildError(f"{what} (neither a folder with <name>_dataset_builder.py nor a registered "
                     f"TFDS name); the project's builders: {known}") from None


def _manual_dir(args: Args, name: str) -> str:
  """The manual_dir TFDS will read for dataset `name` (its default included)."""
  paths = args.paths
  manual = paths.manual_dir or os.path.join(
      os.fspath(paths.download_dir or os.path.join(os.fspath(paths.data_dir), "downloads")),
      "manual")
  if paths.add_name_to_manual_dir:
    manual = os.path.join(os.fspath(manual), name)
  return os.fspath(manual)


def _layout_doc(builder_cls) -> str:
  """Where a builder's manual_dir layout is written (its folder's README.md)."""
  module = sys.modules.get(builder_cls.__module__)
  folder = os.path.dirname(getattr(module, "__file__", "") or "")
  readme = os.path.join(folder, "README.md")
  return readme if os.path.exists(readme) else f"{builder_cls.name}'s MANUAL_DOWNLOAD_INSTRUCTIONS"


def check_args(args: Args) -> None:
  """The builders, configs and manual_dirs `args` names exist: otherwise a
  `BuildError` naming the argument, before anything is built."""
  imports = bool(args.generation.imports)
  for dataset in (args.positional_datasets + args.datasets) or [""]:
    builder_cls, kwargs = _builder_class(dataset, imports)
    config = args.generation.config or kwargs.get("config")
    names = [c.name for c in builder_cls.BUILDER_CONFIGS or ()]
    if config and not isinstance(config, tfds.core.BuilderConfig) and names and (
        str(config) not in names):
      raise BuildError(f"unknown config {str(config)!r} of {builder_cls.name} "
                       f"(--config; its configs: {', '.join(names)})")
    if getattr(builder_cls, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
      manual = _manual_dir(args, builder_cls.name)
      given = (f"--manual_dir {manual}" if args.paths.manual_dir
               else f"manual_dir {manual} (the default: no --manual_dir given)")
      problem = ("does not exist or is not a folder" if not os.path.isdir(manual)
                 else "is empty" if not os.listdir(manual) else "")
      if problem:
        raise BuildError(f"{builder_cls.name} reads your files from a manual_dir: {given} "
                         f"{problem} (layout: {_layout_doc(builder_cls)})")


def _one_line(error: BaseException) -> str:
  return " ".join(str(error).split())


def main(args: Args) -> None:
  """Same set-up as `tensorflow_datasets.scripts.cli.main.main`, then build;
  errors a user can cause as one line, exit code 2."""
  try:
    _build(args)
  except UserError as e:
    _fail(_one_line(e))
  except AssertionError as e:
    # TFDS's own manual_dir check (DownloadManager.manual_dir), should one
    # be reached that `check_args` did not foresee.
    if not str(e).startswith("Manual directory"):
      raise
    _fail(_one_line(str(e).split(" Create it")[0]))


def _fail(message: str) -> None:
  sys.stdout.flush()
  # On a terminal a progress bar may have left the cursor mid-line.
  start = "\n" if sys.stderr.isatty() else ""
  print(f"{start}error: {message}", file=sys.stderr)
  sys.exit(2)


def _build(args: Args) -> None:
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
  else:
    for module in args.generation.imports.split(","):
      importlib.import_module(module)
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)  # TFDS logs the resolution again in `execute`
  try:
    check_args(args)
  finally:
    logging.set_verbosity(verbosity)
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()  # a log file gets the INFO lines, not redrawn bars
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
