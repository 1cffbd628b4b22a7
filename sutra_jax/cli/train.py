r"""sutra-train: train one phase of a SUTRA model.

  sutra-train --gin_file=runs/demo.gin --gin_file=phases/concept.gin \
      --run_dir=runs/demo/concept

Re-running the same command resumes from the newest checkpoint in --run_dir,
and returns at once when the phase is finished. On success it prints one
JSON line with the step reached and the losses.
"""

import dataclasses
import json
from typing import Sequence

from absl import flags

from sutra_jax import gin_utils
from sutra_jax.cli import common
from sutra_jax.errors import ConfigError
from sutra_jax.training import phases
from sutra_jax.training import trainer

_RUN_DIR = flags.DEFINE_string(
    "run_dir", None,
    "Folder for the phase's checkpoints, metrics and config.gin; created if "
    "missing. Re-use it to resume.")
common.define_gin_flags()


def main(argv: Sequence[str]) -> int:
  """Parses gin, validates the phase and trains it."""
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {' '.join(argv[1:])!r}; pass "
                      "settings as --gin_bindings")
  if not _RUN_DIR.value:
    raise ConfigError("--run_dir is required: the folder for the phase's "
                      "checkpoints and metrics")
  gin_utils.parse_config(flags.FLAGS.gin_file, flags.FLAGS.gin_bindings)
  phase = phases.phase_from_gin()
  result = trainer.train(_RUN_DIR.value, phase)
  print(json.dumps(dataclasses.asdict(result)))
  return 0


def run() -> None:
  """Console-script entry point of `sutra-train`."""
  common.run_main(main)


if __name__ == "__main__":
  run()
