"""Shared start-up for the command-line entry points."""

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


def quiet_native_logs() -> None:
  """Silences TensorFlow's C++ start-up chatter unless the user set it."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_main(main: Callable[[Sequence[str]], int | None]) -> None:
  """Runs an absl main; a UserError becomes one line on stderr and exit 2."""

  def guarded(argv: Sequence[str]) -> int | None:
    try:
      return main(argv)
    except UserError as e:
      logging.flush()
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  quiet_native_logs()
  app.run(guarded)
