r"""sutra-bench: time the train step on synthetic batches.

  sutra-bench language-mix [--json] [--steps=5] [--repeats=3]
  sutra-bench language-mix --gin_file=models/tiny.gin --batch_size=4
  sutra-bench decode [--json] [--new_tokens=256] [--batch_size=8]

`language-mix` times one full train step (forward, backward, AdamW update)
on two batches of the same shape. In the first every token is in one
language. The second packs 8 languages of 8 language groups into every row.
It reports the median seconds per step of each and their ratio
(mixed / single).
`decode` times greedy generation of --new_tokens tokens per prompt with the
KV-cache decoder and with full recomputation per token
(`sutra_jax.tools.bench_decode`) and reports tokens per second of each and
their ratio.
The model has random parameters and the languages of the gin-bound
`language_table` (default: the 28 demo languages).
"""

import json
import sys
from typing import Sequence

from absl import flags

from sutra_jax.cli import common
from sutra_jax.errors import ConfigError

COMMANDS = ("language-mix", "decode")
DEFAULT_GIN_FILES = ("models/small.gin",)

common.define_gin_flags()
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Sequences per batch.")
_SEQUENCE_LENGTH = flags.DEFINE_integer(
    "sequence_length", 256, "Tokens per sequence; a multiple of 8, because "
    "each row packs 8 segments.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps per "
                              "measurement.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "Measurements of each batch, taken alternately; the "
    "median is reported.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 256, "decode: tokens "
                                   "generated per prompt.")
_PROMPT_LENGTH = flags.DEFINE_integer("prompt_length", 16, "decode: tokens "
                                      "per prompt.")


def _check_flags(argv: Sequence[str]) -> str:
  """Validates the command line before anything heavy is imported."""
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise ConfigError(f"expected one command, one of {', '.join(COMMANDS)}; "
                      f"got {' '.join(argv[1:]) or 'none'}")
  for flag in (_BATCH_SIZE, _SEQUENCE_LENGTH, _STEPS, _REPEATS, _NEW_TOKENS,
               _PROMPT_LENGTH):
    if flag.value <= 0:
      raise ConfigError(f"invalid --{flag.name} {flag.value}: expected a "
                        "positive integer")
  if _SEQUENCE_LENGTH.value % 8:
    raise ConfigError(f"invalid --sequence_length {_SEQUENCE_LENGTH.value}: "
                      "expected a multiple of 8")
  return argv[1]


def format_table(report: dict) -> str:
  """Formats a `language_mix` report as aligned text lines."""
  return "\n".join([
      f"config      {report['config']}",
      f"batch       {report['batch_size']} x {report['sequence_length']} "
      "tokens",
      f"timing      median of {report['repeats']} x {report['steps']} steps",
      f"device      {report['device']}",
      f"single      {report['single_language_step_seconds']:.4f} s/step",
      f"mixed (8)   {report['mixed_language_step_seconds']:.4f} s/step",
      f"ratio       {report['ratio']:.3f}",
  ])


def language_mix_report(gin_files: Sequence[str],
                        gin_bindings: Sequence[str]) -> dict:
  """Parses the gin config and runs `sutra_jax.tools.bench.language_mix`."""
  # pylint: disable=g-import-not-at-top
  from sutra_jax import gin_utils
  from sutra_jax import languages
  from sutra_jax.models.config import make_model_config
  from sutra_jax.tools import bench
  # pylint: enable=g-import-not-at-top

  gin_utils.parse_config(gin_files, gin_bindings)
  table = languages.language_table()
  report = bench.language_mix(
      make_model_config(table), table, batch_size=_BATCH_SIZE.value,
      sequence_length=_SEQUENCE_LENGTH.value, steps=_STEPS.value,
      repeats=_REPEATS.value)
  return dict(report, config=" + ".join(gin_files),
              gin_bindings=list(gin_bindings))


def decode_report(gin_files: Sequence[str],
                  gin_bindings: Sequence[str]) -> dict:
  """Parses the gin config and runs `bench_decode.decode_speed`."""
  # pylint: disable=g-import-not-at-top
  from sutra_jax import gin_utils
  from sutra_jax import languages
  from sutra_jax.models.config import make_model_config
  from sutra_jax.tools import bench_decode
  # pylint: enable=g-import-not-at-top

  gin_utils.parse_config(gin_files, gin_bindings)
  table = languages.language_table()
  report = bench_decode.decode_speed(
      make_model_config(table), table, batch_size=_BATCH_SIZE.value,
      prompt_length=_PROMPT_LENGTH.value, new_tokens=_NEW_TOKENS.value,
      repeats=_REPEATS.value)
  return dict(report, config=" + ".join(gin_files),
              gin_bindings=list(gin_bindings))


def main(argv: Sequence[str]) -> int:
  command = _check_flags(argv)
  gin_files = flags.FLAGS.gin_file or list(DEFAULT_GIN_FILES)
  if command == "decode":
    report = decode_report(gin_files, flags.FLAGS.gin_bindings)
    print(json.dumps(report, indent=2) if _JSON.value else "\n".join(
        f"{key:<28} {value}" for key, value in report.items()))
    sys.stdout.flush()
    return 0
  report = language_mix_report(gin_files, flags.FLAGS.gin_bindings)
  if _JSON.value:
    print(json.dumps(report, indent=2))
  else:
    print(format_table(report))
  sys.stdout.flush()
  return 0


def run() -> None:
  """Console-script entry point of `sutra-bench`."""
  common.run_main(main)


if __name__ == "__main__":
  run()
