r"""sutra-eval: evaluate a trained run.

  sutra-eval perplexity --checkpoint_dir=runs/demo/alignment [--json]
  sutra-eval perplexity --checkpoint_dir=DIR --data_dir=FOLDER

`perplexity` reports per-language perplexity. Without --data_dir it reads
the held-out (`validation`) split of the run's own mixture; with --data_dir
it reads `<language code>.txt` files, one example per line.
"""

import json
import os
import sys
from typing import Sequence

from absl import flags

from sutra_jax.cli import common
from sutra_jax.errors import ConfigError
from sutra_jax.errors import DataError

COMMANDS = ("perplexity",)

_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "Run directory written by sutra-train.")
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint step to evaluate; default: the newest.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Folder of <language code>.txt files to evaluate on; "
    "default: the held-out split of the run's mixture.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Sequences per batch; default: the run's batch size.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of a table.")


def _check_flags(argv: Sequence[str]) -> str:
  """Validates the command line before anything heavy is imported."""
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise ConfigError(f"expected one command, one of {', '.join(COMMANDS)}; "
                      f"got {' '.join(argv[1:]) or 'none'}")
  if not _CHECKPOINT_DIR.value:
    raise ConfigError("--checkpoint_dir is required: the run directory of a "
                      "sutra-train run")
  if _DATA_DIR.value and not os.path.isdir(_DATA_DIR.value):
    raise DataError(f"data directory not found: {_DATA_DIR.value!r}; pass a "
                    "folder of <language code>.txt files")
  if _BATCH_SIZE.value is not None and _BATCH_SIZE.value <= 0:
    raise ConfigError(f"invalid --batch_size {_BATCH_SIZE.value}: expected a "
                      "positive integer")
  return argv[1]


def format_table(results: dict[str, dict[str, float]]) -> str:
  lines = ["language  perplexity  loss (nats)  tokens"]
  for code in sorted(results):
    r = results[code]
    lines.append(f"{code:<9} {r['perplexity']:>10.2f}  {r['loss']:>11.4f}  "
                 f"{int(r['tokens']):>6}")
  return "\n".join(lines)


def perplexity(checkpoint_dir: str, step: int | None, data_dir: str | None,
               batch_size: int | None) -> dict:
  """Loads the run and returns its per-language perplexity results."""
  # pylint: disable=g-import-not-at-top
  from sutra_jax.data import pipeline
  from sutra_jax.data import text_files
  from sutra_jax.eval import perplexity as perplexity_lib
  from sutra_jax.inference import loading
  # pylint: enable=g-import-not-at-top

  loading.check_run_dir(checkpoint_dir)
  run = loading.load_run(checkpoint_dir, step)
  table = run.language_table
  if data_dir:
    name = text_files.register_text_dir_mixture(data_dir, run.vocabulary,
                                                table)
  else:
    name = run.phase.mixture
  dataset = pipeline.get_dataset(
      name, split="validation", sequence_length=run.phase.sequence_length,
      batch_size=batch_size or run.phase.batch_size, language_table=table,
      shuffle=False, seed=0, repeat=False)
  results = perplexity_lib.per_language_perplexity(
      run.model, pipeline.as_numpy_batches(dataset), table)
  return {"checkpoint_dir": checkpoint_dir, "step": run.step,
          "data": data_dir or f"{name}:validation",
          "per_language": results}


def main(argv: Sequence[str]) -> int:
  _check_flags(argv)
  report = perplexity(_CHECKPOINT_DIR.value, _STEP.value, _DATA_DIR.value,
                      _BATCH_SIZE.value)
  if _JSON.value:
    print(json.dumps(report, ensure_ascii=False, indent=2))
  else:
    print(f"{report['checkpoint_dir']} step {report['step']} on "
          f"{report['data']}")
    print(format_table(report["per_language"]))
  sys.stdout.flush()
  return 0


def run() -> None:
  """Console-script entry point of `sutra-eval`."""
  common.run_main(main)


if __name__ == "__main__":
  run()
