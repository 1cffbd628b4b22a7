"""Shared start-up for the command-line entry points."""

import logging as logging_std
import os
import sys
from typing import Callable, Sequence

from absl import app
from absl import flags
from absl import logging

from sutra_jax.errors import UserError


def define_gin_flags() -> None:
  """Defines --gin_file and --gin_bindings on the absl flag registry."""
  flags.DEFINE_multi_string(
      "gin_file", [], "Gin file to parse, by path or relative to gin_configs/;"
      " repeat to layer files.")
  flags.DEFINE_multi_string(
      "gin_bindings", [], "Gin binding such as 'train.num_steps = 100'; "
      "repeat for several.")


def _raised_in_orbax(exc_info) -> bool:
  """Returns whether an exception's traceback passes through orbax's code."""
  frame = exc_info[2] if exc_info else None
  while frame is not None:
    if f"{os.sep}orbax{os.sep}" in frame.tb_frame.f_code.co_filename:
      return True
    frame = frame.tb_next
  return False


class _DropLibraryInfo(logging_std.Filter):
  """Drops INFO records of libraries that log every file they touch."""

  _NOISY = (f"{os.sep}orbax{os.sep}", f"{os.sep}gin{os.sep}",
            f"{os.sep}seqio{os.sep}")

  def filter(self, record: logging_std.LogRecord) -> bool:
    if f"{os.sep}orbax{os.sep}" in record.pathname:
      if record.levelno <= logging_std.WARNING:
        # orbax warns on every read-only open of a checkpoint folder.
        return False
      # orbax logs each failed writer thread of a failed save with its
      # traceback; the trainer reports the failure as one error line.
      record.exc_info, record.exc_text = None, None
    if record.name == "asyncio" and _raised_in_orbax(record.exc_info):
      # The same failed writes again: orbax tasks left unawaited after the
      # save failed.
      record.exc_info, record.exc_text = None, None
    if record.levelno > logging_std.INFO:
      # gin logs a failed lookup of each search path as an error, even when
      # a later path has the file.
      return not (f"{os.sep}gin{os.sep}" in record.pathname and
                  record.getMessage().startswith("Path not found"))
    return not any(part in record.pathname for part in self._NOISY)


def quiet_native_logs() -> None:
  """Silences library start-up chatter unless the user set the levels."""
  # NOTE: TensorFlow 2.21 still prints its start-up lines (oneDNN, CUDA
  # probe) at any TF_CPP_MIN_LOG_LEVEL; the level only quiets older releases.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  logging.get_absl_handler().addFilter(_DropLibraryInfo())
  try:
    import sentencepiece  # pylint: disable=g-import-not-at-top
    sentencepiece.set_min_log_level(1)
  except (ImportError, AttributeError):
    pass


def _is_late_tensorstore_callback(unraisable) -> bool:
  """Returns whether an unraisable error is a late read or write callback.

  orbax awaits many tensorstore futures inside one `asyncio.run`. When one
  of them fails, the loop closes while the others are still in flight. Each
  of those then fails to schedule its callback on the closed loop. The first
  failure is what the user needs, and it is reported as an error line.
  """
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and
          str(error) == "Event loop is closed"):
    return False
  frame = unraisable.exc_traceback
  while frame is not None and frame.tb_next is not None:
    frame = frame.tb_next
  # call_soon_threadsafe raises this error from its _check_closed call.
  return frame is not None and frame.tb_frame.f_code.co_name == "_check_closed"


def _drop_late_tensorstore_callbacks() -> None:
  """Installs a hook that logs one warning for late tensorstore callbacks."""
  default_hook = sys.unraisablehook

  def hook(unraisable) -> None:
    if _is_late_tensorstore_callback(unraisable):
      logging.log_first_n(
          logging.WARNING, "A tensorstore operation finished after its "
          "event loop closed; an earlier error says why.", 1)
      return
    default_hook(unraisable)

  sys.unraisablehook = hook


def run_main(main: Callable[[Sequence[str]], int | None]) -> None:
  """Runs an absl main; a UserError becomes one line on stderr and exit 2."""

  def guarded(argv: Sequence[str]) -> int | None:
    try:
      return main(argv)
    except UserError as e:
      logging.flush()
      # Gin appends "In call to configurable ..." lines to errors raised
      # inside a configurable, so print the message's first line only.
      message = str(e).strip().splitlines()
      print(f"error: {message[0] if message else type(e).__name__}",
            file=sys.stderr)
      sys.exit(2)

  quiet_native_logs()
  _drop_late_tensorstore_callbacks()
  app.run(guarded)
