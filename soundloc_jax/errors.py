"""Errors a user can fix; the command line prints them as one line (exit code 2).

Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Base class: the message names the offending file, key or value."""


class ConfigError(UserError, ValueError):
  """A config value is unknown or inconsistent."""


class DatasetError(UserError, RuntimeError):
  """A dataset is missing or does not match the config."""


class TrainingError(UserError, RuntimeError):
  """Training cannot continue (non-finite loss, incompatible workdir, ...)."""
