"""Command line: `python -m soundloc_jax.main --config=configs/iterative.py --workdir=DIR`.

Flags: `--config` (an ml_collections config file, optionally `:PRESET`; any
field can be overridden with `--config.a.b=value`; the config is locked, so
a misspelt field is an error; a `configs/NAME.py` path that does not exist
relative to the working directory names the packaged
`soundloc_jax/configs/NAME.py`, so the same command works from a clone and
after `pip install`), `--workdir` (checkpoints, metrics, reports; rerunning
the same command resumes), `--mode` (`train`, the default, which
also scores the test splits at the end; or `eval`, which scores the latest or
`--checkpoint_step` checkpoint). Errors a user can fix (missing dataset,
incompatible workdir, bad config value) are printed as one line, exit code 2.
"""

import logging as std_logging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from soundloc_jax.errors import help_is_not_an_error

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/iterative.py[:PRESET]; a configs/NAME.py that "
    "does not exist here is read from the installed package (soundloc_jax/configs/).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (default) or evaluate.")
_CHECKPOINT_STEP = flags.DEFINE_integer("checkpoint_step", None,
                                        "Checkpoint step for --mode=eval (default: latest).")
_BEST = flags.DEFINE_bool("best", False, "--mode=eval: use the best validation checkpoint "
                          "(workdir/checkpoints_best) instead of the latest.")
# Multi-host (one process per host; also $SOUNDLOC_COORDINATOR_ADDRESS,
# $SOUNDLOC_NUM_PROCESSES, $SOUNDLOC_PROCESS_ID): see soundloc_jax/distributed.py.
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for multi-host runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def _one_line(error: BaseException) -> str:
  """absl folds the config file's traceback into its message: keep the last line."""
  lines = [l.strip() for l in str(error).strip().splitlines() if l.strip()]
  return re.sub(r"^\w+(Error|Exception): ", "", lines[-1]) if lines else type(error).__name__


def packaged_config_path(value: str) -> str:
  """`--config`'s value with a `configs/NAME.py` that does not exist relative to
  the working directory replaced by the packaged file (the clone's `configs`
  is a link to the same folder); anything else is returned unchanged."""
  path, colon, arg = value.partition(":")
  if os.path.exists(path) or not path.startswith("configs/"):
    return value
  packaged = os.path.join(_PACKAGE_DIR, path)
  return packaged + colon + arg if os.path.exists(packaged) else value


def _with_packaged_config(argv):
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      argv[i] = "--config=" + packaged_config_path(arg[len("--config="):])
    elif arg == "--config" and i + 1 < len(argv):
      argv[i + 1] = packaged_config_path(argv[i + 1])
  return argv


def parse_flags(argv):
  """absl's flag parsing, with bad flags and config errors as one line, exit 2."""
  argv = _with_packaged_config(argv)
  try:
    with help_is_not_an_error(argv):
      args = flags.FLAGS(argv)
    if _CONFIG.value is not None:
      _CONFIG.value.keys()  # a config file that failed to load raises here
    return args
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError) as e:
    message = _one_line(e)
    if isinstance(e, (KeyError, AttributeError)):  # locked config: no such field
      key = message.strip("\"'")
      bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and key in a]
      message = (f"unknown config field {key!r}" + (f" in {bad[0]}" if bad else "")
                 + "; see configs/default.py for the fields")
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class _LibraryLines(std_logging.Formatter):
  """soundloc_jax's own log lines print as plain lines (warnings as `warning:
  ...`); other libraries' keep absl's format."""

  def __init__(self, absl_formatter):
    super().__init__()
    self.absl_formatter = absl_formatter

  def format(self, record):
    if not _is_ours(record):
      return self.absl_formatter.format(record)
    prefix = {std_logging.WARNING: "warning: ", std_logging.ERROR: "error: "}
    return prefix.get(record.levelno, "") + record.getMessage()


def _is_ours(record) -> bool:
  return os.path.abspath(record.pathname).startswith(_PACKAGE_DIR + os.sep)


def _configure_logging() -> None:
  """Info lines of soundloc_jax (absl.logging) are shown; those of orbax and
  TFDS, which drown the progress, are not; warnings of all are."""
  handler = logging.get_absl_handler()
  handler.setFormatter(_LibraryLines(handler.python_handler.formatter))
  handler.addFilter(lambda r: r.levelno >= std_logging.WARNING or _is_ours(r))
  logging.set_verbosity(logging.INFO)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # Imported here so `--help` and flag errors stay fast.
  from soundloc_jax import distributed, evaluate, train
  from soundloc_jax.errors import UserError
  _configure_logging()
  distributed.enable_compilation_cache()
  try:
    distributed.initialize_from_env_or_flags(_COORDINATOR.value, _NUM_PROCESSES.value,
                                             _PROCESS_ID.value)
    if _MODE.value == "train":
      train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    else:
      evaluate.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _CHECKPOINT_STEP.value,
                                   best=_BEST.value)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
