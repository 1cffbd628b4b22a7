r"""sutra-train: train one phase of a SUTRA model.

  sutra-train --gin_file=runs/demo.gin --gin_file=phases/concept.gin \
      --run_dir=runs/demo/concept

On SIGTERM it saves at the next step boundary and exits 0.
Re-running the same command resumes from the newest checkpoint in --run_dir,
and returns at once when the phase is finished. On success it prints one
JSON line with the step reached and the losses.
"""

import dataclasses
import json
from typing import Sequence

from absl import flags

from sutra_jax import distributed
from sutra_jax import gin_utils
from sutra_jax.cli import common
from sutra_jax.errors import ConfigError
from sutra_jax.training import phases
from sutra_jax.training import trainer

_RUN_DIR = flags.DEFINE_string(
    "run_dir", None,
    "Folder for the phase's checkpoints, metrics and config.gin; created if "
    "missing. Re-use it to resume.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 in a multi-process run; set it with "
    "--num_processes and --process_id, or use --distributed_auto.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Index of this process in [0, --num_processes).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", None,
    "Host devices of this process on the CPU backend; default: JAX's.")
_DISTRIBUTED_AUTO = flags.DEFINE_bool(
    "distributed_auto", False,
    "Join a multi-process run whose coordinator and process ids JAX detects "
    "itself, as on every worker of a TPU VM slice.")
common.define_gin_flags()


def main(argv: Sequence[str]) -> int:
  """Parses gin, validates the phase and trains it."""
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {' '.join(argv[1:])!r}; pass "
                      "settings as --gin_bindings")
  if not _RUN_DIR.value:
    raise ConfigError("--run_dir is required: the folder for the phase's "
                      "checkpoints and metrics")
  # First, because the device list is fixed once anything starts the JAX
  # backend.
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                         _PROCESS_ID.value, _CPU_DEVICES.value,
                         auto=_DISTRIBUTED_AUTO.value)
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
