r"""sutra-data: inspect the training data of a phase.

  sutra-data inspect --mixture NAME --gin_file=runs/demo.gin \
      --gin_file=phases/concept.gin [--batches 20] [--json]

`inspect` parses the gin files, registers the mixtures that the gin-bound
`PhaseConfig` names, and prints each task's mixing rate and number of train
examples, then the tokens of each language in a sample of batches read
through the training pipeline, with the sample's packing efficiency (the
fraction of non-padding tokens). NAME may omit the `.vocab_<key>` suffix.
"""

import json
import sys
from typing import Sequence

from absl import flags

from sutra_jax.cli import common
from sutra_jax.errors import ConfigError

COMMANDS = ("inspect",)

common.define_gin_flags()
_MIXTURE = flags.DEFINE_string("mixture", None,
                               "The seqio mixture or task to inspect.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Batches in the token sample.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Rows per sampled batch; default: the phase's "
    "batch_size.")
_SEQUENCE_LENGTH = flags.DEFINE_integer(
    "sequence_length", None, "Tokens per row; default: the phase's "
    "sequence_length.")
_SEED = flags.DEFINE_integer("seed", None,
                             "Sampling seed; default: the phase's seed.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of a table.")


def _check_flags(argv: Sequence[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise ConfigError(f"expected one command, one of {', '.join(COMMANDS)}; "
                      f"got {' '.join(argv[1:]) or 'none'}")
  if not _MIXTURE.value:
    raise ConfigError("--mixture is required, for example --mixture concept")
  for flag in (_BATCHES, _BATCH_SIZE, _SEQUENCE_LENGTH):
    if flag.value is not None and flag.value <= 0:
      raise ConfigError(f"invalid --{flag.name} {flag.value}: expected a "
                        "positive integer")


def inspect_report(mixture: str, gin_files: Sequence[str],
                   gin_bindings: Sequence[str]) -> dict:
  """Parses gin, registers the phase's mixture and inspects `mixture`."""
  # pylint: disable=g-import-not-at-top
  from sutra_jax import gin_utils
  from sutra_jax import languages
  from sutra_jax.data import inspection
  from sutra_jax.training import phases
  # pylint: enable=g-import-not-at-top

  gin_utils.parse_config(gin_files, gin_bindings)
  phase = phases.phase_from_gin()  # Registers the gin-bound mixture.
  name = inspection.resolve_name(mixture)
  table = languages.language_table()
  sample = inspection.sample_tokens(
      name, table, batches=_BATCHES.value,
      batch_size=_BATCH_SIZE.value or phase.batch_size,
      sequence_length=_SEQUENCE_LENGTH.value or phase.sequence_length,
      seed=phase.seed if _SEED.value is None else _SEED.value)
  return {"mixture": name, "tasks": inspection.task_table(name),
          "sample": sample}


def main(argv: Sequence[str]) -> int:
  _check_flags(argv)
  report = inspect_report(_MIXTURE.value, flags.FLAGS.gin_file,
                          flags.FLAGS.gin_bindings)
  if _JSON.value:
    print(json.dumps(report, indent=2, ensure_ascii=False))
  else:
    from sutra_jax.data import inspection  # pylint: disable=g-import-not-at-top
    print(inspection.format_report(report))
  sys.stdout.flush()
  return 0


def run() -> None:
  """Console-script entry point of `sutra-data`."""
  common.run_main(main)


if __name__ == "__main__":
  run()
