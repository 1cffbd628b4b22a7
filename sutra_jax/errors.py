"""User-facing errors.

A `UserError` is a problem with the user's input (a flag, a gin binding, a
file). The command-line entry points print its message as one line and exit
with status 2, without a traceback. Raise it before any heavy work starts.
"""


class UserError(Exception):
  """Invalid user input; the message names the value and the fix."""


class ConfigError(UserError):
  """Invalid configuration: a gin file, binding or flag value."""


class DataError(UserError):
  """Missing, empty or malformed input data."""


class CheckpointError(UserError):
  """A checkpoint that is missing, incomplete or does not match the model."""


class DivergenceError(UserError):
  """Training kept producing a non-finite loss or gradient norm."""
