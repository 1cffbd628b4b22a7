r"""sutra-bench: time the train step on synthetic batches.

  sutra-bench language-mix [--json] [--steps=5] [--repeats=3]
  sutra-bench train --preset=maxtext_tiny_moe [--dispatch=dropless] [--json]
  sutra-bench moe [--json]
  sutra-bench input [--json]
  sutra-bench decode [--json] [--new_tokens=256] [--batch_size=8]

`language-mix` times one full train step (forward, backward, AdamW update)
on two batches of the same shape. In the first every token is in one
language. The second packs 8 languages of 8 language groups into every row.
It reports the median seconds per step of each and their ratio
(mixed / single). The model has random parameters and the languages of the
gin-bound `language_table` (default: the 28 demo languages).

`train` times the train step of a fixed preset (see
`sutra_jax.tools.bench_train.PRESETS`; the `maxtext_tiny_*` presets mirror
the MaxText CPU anchor) and reports tokens/s and MFU against a matmul peak
measured in the same process. `moe` runs the dense and the MoE preset in one
process and reports the MoE's seconds per model FLOP over the dense one's.

`input` compares the tokens per second of the input pipeline (demo corpus,
packed) with those of the train step (`sutra_jax.tools.bench_input`).

`decode` times greedy generation of --new_tokens tokens per prompt with the
KV-cache decoder and with full recomputation per token
(`sutra_jax.tools.bench_decode`) and reports tokens per second of each and
their ratio.
"""

import json
import sys
from typing import Callable, Sequence

from absl import flags

from sutra_jax.cli import common
from sutra_jax.errors import ConfigError

DEFAULT_GIN_FILES = ("models/small.gin",)

common.define_gin_flags()
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "language-mix: sequences "
                                   "per batch.")
_SEQUENCE_LENGTH = flags.DEFINE_integer(
    "sequence_length", 256, "language-mix: tokens per sequence; a multiple "
    "of 8, because each row packs 8 segments.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps per "
                              "measurement.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "language-mix: measurements of each batch, taken "
    "alternately; the median is reported.")
_PRESET = flags.DEFINE_string("preset", "maxtext_tiny_moe",
                              "train: the preset to time.")
_DISPATCH = flags.DEFINE_string(
    "dispatch", "dropless", "train, moe: MoE dispatch strategy (dropless, "
    "capacity or expert_parallel).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "train, moe: activation "
                             "dtype (float32 or bfloat16).")
_REMAT = flags.DEFINE_string("remat", "none", "train, moe: remat policy "
                             "(none, full, save_dots, save_all_dots).")
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 256, "decode: tokens "
                                   "generated per prompt.")
_PROMPT_LENGTH = flags.DEFINE_integer("prompt_length", 16, "decode: tokens "
                                      "per prompt.")


def _check_positive(*flag_holders) -> None:
  for flag in flag_holders:
    if flag.value <= 0:
      raise ConfigError(f"invalid --{flag.name} {flag.value}: expected a "
                        "positive integer")


def _model_overrides() -> dict[str, str]:
  """The train/moe flags as `ModelConfig` fields, validated by the config."""
  # pylint: disable=g-import-not-at-top
  from sutra_jax.models.config import CHOICES, DTYPES
  # pylint: enable=g-import-not-at-top
  for flag, allowed in ((_DISPATCH, CHOICES["moe_dispatch"]),
                        (_DTYPE, DTYPES), (_REMAT, CHOICES["remat"])):
    if flag.value not in allowed:
      raise ConfigError(f"invalid --{flag.name} {flag.value!r}: expected one "
                        f"of {', '.join(allowed)}")
  return dict(moe_dispatch=_DISPATCH.value, dtype=_DTYPE.value,
              remat=_REMAT.value)


def format_language_mix(report: dict) -> str:
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


def format_train(report: dict) -> str:
  """Formats a `train_benchmark` report as aligned text lines."""
  dispatch = report["moe_dispatch"] or "dense"
  return "\n".join([
      f"preset      {report['preset']} ({dispatch}, {report['dtype']}, "
      f"remat {report['remat']})",
      f"device      {report['device']}, mesh {report['mesh']}",
      f"step        {report['step_seconds_median']:.4f} s (median of "
      f"{report['steps']})",
      f"tokens/s    {report['tokens_per_second']:.0f}",
      f"FLOPs/token {report['model_flops_per_token'] / 1e6:.2f} M",
      f"MFU         {100 * report['mfu']:.1f} % of "
      f"{report['peak_flops_per_second'] / 1e9:.0f} GFLOP/s (measured)",
      f"peak RSS    {report['peak_rss_bytes'] / 2**20:.0f} MiB",
  ])


def format_moe(report: dict) -> str:
  """Formats a `moe_overhead` report as aligned text lines."""
  return "\n".join([
      f"dense       {report['dense']['tokens_per_second']:.0f} tokens/s, "
      f"{report['dense_seconds_per_flop'] * 1e12:.3f} s per TFLOP",
      f"moe         {report['moe']['tokens_per_second']:.0f} tokens/s, "
      f"{report['moe_seconds_per_flop'] * 1e12:.3f} s per TFLOP",
      f"overhead    {report['overhead']:.3f}",
  ])


def _report_with_table(gin_files: Sequence[str], gin_bindings: Sequence[str],
                       benchmark, **kwargs) -> dict:
  """Parses the gin config and runs `benchmark(model_config, table, **kwargs)`.

  The model and the language table come from gin, and the report records
  the gin files and bindings it ran with.
  """
  # pylint: disable=g-import-not-at-top
  from sutra_jax import gin_utils
  from sutra_jax import languages
  from sutra_jax.models.config import make_model_config
  # pylint: enable=g-import-not-at-top

  gin_utils.parse_config(gin_files, gin_bindings)
  table = languages.language_table()
  report = benchmark(make_model_config(table), table, **kwargs)
  return dict(report, config=" + ".join(gin_files),
              gin_bindings=list(gin_bindings))


def language_mix_report(gin_files: Sequence[str],
                        gin_bindings: Sequence[str]) -> dict:
  """Parses the gin config and runs `sutra_jax.tools.bench.language_mix`."""
  from sutra_jax.tools import bench  # pylint: disable=g-import-not-at-top
  return _report_with_table(
      gin_files, gin_bindings, bench.language_mix,
      batch_size=_BATCH_SIZE.value, sequence_length=_SEQUENCE_LENGTH.value,
      steps=_STEPS.value, repeats=_REPEATS.value)


def input_report(gin_files: Sequence[str],
                 gin_bindings: Sequence[str]) -> dict:
  """Parses the gin config and runs `bench_input.input_throughput`."""
  from sutra_jax.tools import bench_input  # pylint: disable=g-import-not-at-top
  return _report_with_table(
      gin_files, gin_bindings, bench_input.input_throughput,
      batch_size=_BATCH_SIZE.value, sequence_length=_SEQUENCE_LENGTH.value,
      steps=_STEPS.value, repeats=_REPEATS.value)


def format_key_values(report: dict) -> str:
  """Formats a flat report as one `key value` line per field."""
  return "\n".join(f"{key:<24}{value}" for key, value in report.items())


def _input() -> tuple[dict, Callable[[dict], str]]:
  _check_positive(_BATCH_SIZE, _SEQUENCE_LENGTH, _STEPS, _REPEATS)
  gin_files = flags.FLAGS.gin_file or list(DEFAULT_GIN_FILES)
  return (input_report(gin_files, flags.FLAGS.gin_bindings),
          format_key_values)


def decode_report(gin_files: Sequence[str],
                  gin_bindings: Sequence[str]) -> dict:
  """Parses the gin config and runs `bench_decode.decode_speed`."""
  from sutra_jax.tools import bench_decode  # pylint: disable=g-import-not-at-top
  return _report_with_table(
      gin_files, gin_bindings, bench_decode.decode_speed,
      batch_size=_BATCH_SIZE.value, prompt_length=_PROMPT_LENGTH.value,
      new_tokens=_NEW_TOKENS.value, repeats=_REPEATS.value)


def _decode() -> tuple[dict, Callable[[dict], str]]:
  _check_positive(_BATCH_SIZE, _REPEATS, _NEW_TOKENS, _PROMPT_LENGTH)
  gin_files = flags.FLAGS.gin_file or list(DEFAULT_GIN_FILES)
  return (decode_report(gin_files, flags.FLAGS.gin_bindings),
          format_key_values)


def _language_mix() -> tuple[dict, Callable[[dict], str]]:
  _check_positive(_BATCH_SIZE, _SEQUENCE_LENGTH, _STEPS, _REPEATS)
  if _SEQUENCE_LENGTH.value % 8:
    raise ConfigError(f"invalid --sequence_length {_SEQUENCE_LENGTH.value}: "
                      "expected a multiple of 8")
  gin_files = flags.FLAGS.gin_file or list(DEFAULT_GIN_FILES)
  return (language_mix_report(gin_files, flags.FLAGS.gin_bindings),
          format_language_mix)


def _parse_gin() -> None:
  """Parses --gin_file and --gin_bindings, for the mesh and axis rules.

  The presets fix the model, so gin sets how the step is laid out: for
  example `make_mesh.expert = 2` with `--dispatch=expert_parallel`.
  """
  # pylint: disable=g-import-not-at-top
  from sutra_jax import gin_utils
  # pylint: enable=g-import-not-at-top
  gin_utils.parse_config(flags.FLAGS.gin_file or [], flags.FLAGS.gin_bindings)


def _train() -> tuple[dict, Callable[[dict], str]]:
  _check_positive(_STEPS)
  # pylint: disable=g-import-not-at-top
  from sutra_jax.tools import bench_train
  # pylint: enable=g-import-not-at-top
  bench_train.get_preset(_PRESET.value)
  overrides = _model_overrides()
  _parse_gin()
  return (bench_train.train_benchmark(_PRESET.value, steps=_STEPS.value,
                                      **overrides), format_train)


def _moe() -> tuple[dict, Callable[[dict], str]]:
  _check_positive(_STEPS)
  # pylint: disable=g-import-not-at-top
  from sutra_jax.tools import bench_train
  # pylint: enable=g-import-not-at-top
  overrides = _model_overrides()
  _parse_gin()
  return bench_train.moe_overhead(steps=_STEPS.value, **overrides), format_moe


# Each command validates its flags, runs, and returns (report, formatter).
COMMANDS: dict[str, Callable[[], tuple[dict, Callable[[dict], str]]]] = {
    "language-mix": _language_mix,
    "train": _train,
    "moe": _moe,
    "input": _input,
    "decode": _decode,
}


def main(argv: Sequence[str]) -> int:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise ConfigError(f"expected one command, one of {', '.join(COMMANDS)}; "
                      f"got {' '.join(argv[1:]) or 'none'}")
  report, formatter = COMMANDS[argv[1]]()
  print(json.dumps(report, indent=2) if _JSON.value else formatter(report))
  sys.stdout.flush()
  return 0


def run() -> None:
  """Console-script entry point of `sutra-bench`."""
  common.run_main(main)


if __name__ == "__main__":
  run()
