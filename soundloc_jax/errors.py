"""Errors a user can fix, all in one place; the command lines print them as one
line (exit code 2). Anything else is a bug and keeps its traceback.

Every message names the offending file, key or value. The classes say what
kind of thing is wrong, so callers can catch one kind:
  ConfigError               a config value is unknown or inconsistent
  DatasetError              a dataset is missing or does not match the config
    MediaError              a media file is missing, corrupt or lacks a stream
  TrainingError             training cannot go on (non-finite loss, another
                            run's workdir, ...)
  WorkdirError              a workdir is missing, incomplete or unusable
    CheckpointMismatchError a checkpoint of another model than the config's
    CorruptCheckpointError  a listed checkpoint that cannot be read
  InputError                an image, waveform or file given to inference
`help_is_not_an_error` makes an absl command's `--help` exit with 0.
"""

import contextlib
import sys

HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


@contextlib.contextmanager
def help_is_not_an_error(argv):
  """Around absl's flag parsing: its help flags print the help and exit with
  1; asking for help is not an error, so exit with 0 instead."""
  try:
    yield
  except SystemExit as e:
    if e.code == 1 and any(a in HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise


class UserError(Exception):
  """Base class: the message names the offending file, key or value."""


class ConfigError(UserError, ValueError):
  """A config value is unknown or inconsistent."""


class DatasetError(UserError, RuntimeError):
  """A dataset is missing or does not match the config."""


class MediaError(DatasetError):
  """A media file is missing, corrupt or lacks the stream that was asked for."""


class TrainingError(UserError, RuntimeError):
  """Training cannot continue (non-finite loss, incompatible workdir, ...)."""


class WorkdirError(UserError, RuntimeError):
  """The workdir is missing, incomplete, or holds no usable checkpoint."""


class CheckpointMismatchError(WorkdirError):
  """The checkpoint does not fit the model that the config describes."""


class CorruptCheckpointError(WorkdirError):
  """A checkpoint folder orbax lists but cannot read (truncated, edited, half-deleted)."""


class InputError(UserError, ValueError):
  """An image, waveform or media file that cannot be localized (wrong shape,
  dtype, format; empty; missing)."""
