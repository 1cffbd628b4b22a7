r"""sutra-eval: evaluate a trained run.

  sutra-eval mmlu --data_dir=FOLDER --checkpoint_dir=DIR [--step=N] [--json]
  sutra-eval xcopa --data_dir=FOLDER --checkpoint_dir=DIR [--json]
  sutra-eval perplexity --checkpoint_dir=DIR [--data_dir=FOLDER | --task=NAME]
  sutra-eval alignment --checkpoint_dir=DIR --parallel_dir=FOLDER [--json]

--checkpoint_dir is a run directory written by sutra-train; the newest step
is evaluated unless --step names another.

`mmlu` and `xcopa` score multiple-choice questions by rank classification
(see `sutra_jax.eval.rank_classification`) and report accuracy per language
and subject, the macro average over languages, the standard deviation
across languages and the share of parallel questions answered the same way
in every language. --data_dir is an MMLU folder (standard per-subject CSV
files or translated CSV files with a header, one folder per language) or an
XCOPA folder of `<split>.<language>.jsonl` files. Languages that the model
lacks are scored with the blocks of --fallback_language.

`perplexity` reports per-language perplexity. Each example is cut to the
run's sequence length, so only the first PhaseConfig.sequence_length tokens
of a long line are scored. Without --data_dir or --task it reads the
held-out (`validation`) split of the run's own mixture; with --data_dir it
reads `<language code>.txt` files, one example per line; with --task it
reads any registered seqio task or mixture (--task_module imports the
modules that register it).

`alignment` reports, for each language X of a folder of parallel text, the
top-1 accuracy of retrieving a sentence's translation English -> X and
X -> English by the cosine similarity of mean-pooled concept core states
(see `sutra_jax.eval.alignment`). The folder contains NTREX-128 files or
`<language code>.txt` files with `en.txt`, aligned line by line.
"""

import json
import os
import sys
from typing import Sequence

from absl import flags

from sutra_jax.cli import common
from sutra_jax.errors import ConfigError
from sutra_jax.errors import DataError

COMMANDS = ("perplexity", "alignment", "mmlu", "xcopa")
MULTIPLE_CHOICE = ("mmlu", "xcopa")

_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "Run directory written by sutra-train.")
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint step to evaluate; default: the newest.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "mmlu, xcopa: the benchmark folder. perplexity: a "
    "folder of <language code>.txt files; default: the held-out split of the "
    "run's mixture.")
_TASK = flags.DEFINE_string(
    "task", None, "perplexity: a registered seqio task or mixture to "
    "evaluate on, instead of --data_dir.")
_TASK_MODULE = flags.DEFINE_multi_string(
    "task_module", [], "perplexity: Python module to import before --task is "
    "looked up, for tasks registered by your own code; repeat for several.")
_SPLIT = flags.DEFINE_string(
    "split", None, "Split to evaluate. mmlu, xcopa: default test if present, "
    "else val. perplexity with --task: default validation.")
_NUM_SHOTS = flags.DEFINE_integer(
    "num_shots", None, "mmlu, xcopa: solved examples per prompt, from the "
    "dev split (mmlu) or other questions of the file (xcopa); default 5 for "
    "mmlu and 0 for xcopa.")
_SCORING = flags.DEFINE_enum(
    "scoring", None, ["letter", "answer"], "mmlu, xcopa: score the answer "
    "letter after a prompt that lists the options, or the full answer "
    "text; default letter for mmlu and answer for xcopa.")
_NORMALIZATION = flags.DEFINE_enum(
    "normalization", "none", ["none", "token", "char"], "mmlu, xcopa: divide "
    "an answer's log-likelihood by nothing, its tokens or its characters.")
_LANGUAGE = flags.DEFINE_string(
    "language", None, "mmlu: language code of a single-language folder; "
    "default: the last _-part of the folder name (mmlu_en -> en).")
_FALLBACK_LANGUAGE = flags.DEFINE_string(
    "fallback_language", "en", "mmlu, xcopa: language whose encoder and "
    "decoder blocks score languages the model lacks; empty rejects them.")
_MAX_QUESTIONS = flags.DEFINE_integer(
    "max_questions", 0, "mmlu, xcopa: evaluate only the first N questions of "
    "each subject (mmlu) or language (xcopa); 0 evaluates all.")
_MAX_INPUT_LENGTH = flags.DEFINE_integer(
    "max_input_length", 2048, "mmlu, xcopa: maximum model input tokens per "
    "question; longer prompts lose their first tokens.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Sequences per batch; default: the run's batch size "
    "for perplexity, 32 sentences for alignment and 8 for mmlu and xcopa.")
_PARALLEL_DIR = flags.DEFINE_string(
    "parallel_dir", None, "alignment: folder of parallel text, NTREX-128 "
    "files or <language code>.txt files including en.txt.")
_MAX_LENGTH = flags.DEFINE_integer(
    "max_length", 128, "alignment: tokens kept per sentence; longer "
    "sentences are truncated.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
# Sentences per batch of `alignment` when --batch_size is not set.
_ALIGNMENT_BATCH_SIZE = 32
# Sequences per batch of `mmlu` and `xcopa` when --batch_size is not set.
_MULTIPLE_CHOICE_BATCH_SIZE = 8


def _check_flags(argv: Sequence[str]) -> str:
  """Validates the command line before anything heavy is imported."""
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise ConfigError(f"expected one command, one of {', '.join(COMMANDS)}; "
                      f"got {' '.join(argv[1:]) or 'none'}")
  if not _CHECKPOINT_DIR.value:
    raise ConfigError("--checkpoint_dir is required: the run directory of a "
                      "sutra-train run")
  command = argv[1]
  if command in MULTIPLE_CHOICE and not _DATA_DIR.value:
    raise ConfigError(f"--data_dir is required by {command}: the "
                      f"{command.upper()} data folder")
  if _DATA_DIR.value and not os.path.isdir(_DATA_DIR.value):
    raise DataError(f"data directory not found: {_DATA_DIR.value!r}; pass "
                    "an existing folder")
  if command == "perplexity" and _DATA_DIR.value and _TASK.value:
    raise ConfigError("pass either --data_dir or --task to perplexity, not "
                      "both")
  if _MAX_INPUT_LENGTH.value < 2:
    raise ConfigError(f"invalid --max_input_length {_MAX_INPUT_LENGTH.value}"
                      ": expected an integer >= 2")
  if _BATCH_SIZE.value is not None and _BATCH_SIZE.value <= 0:
    raise ConfigError(f"invalid --batch_size {_BATCH_SIZE.value}: expected a "
                      "positive integer")
  if argv[1] == "alignment":
    if not _PARALLEL_DIR.value:
      raise ConfigError("--parallel_dir is required by alignment: a folder "
                        "of parallel text files")
    if _MAX_LENGTH.value <= 0:
      raise ConfigError(f"invalid --max_length {_MAX_LENGTH.value}: expected "
                        "a positive integer")
  return argv[1]


def format_table(results: dict[str, dict[str, float]]) -> str:
  lines = ["language  perplexity  loss (nats)  tokens"]
  for code in sorted(results):
    r = results[code]
    lines.append(f"{code:<9} {r['perplexity']:>10.2f}  {r['loss']:>11.4f}  "
                 f"{int(r['tokens']):>6}")
  return "\n".join(lines)


def perplexity(checkpoint_dir: str, step: int | None, data_dir: str | None,
               batch_size: int | None, task: str | None = None,
               task_modules: Sequence[str] = (),
               split: str | None = None) -> dict:
  """Loads the run and returns its per-language perplexity results.

  Args:
    checkpoint_dir: the run directory.
    step: the checkpoint step; None takes the newest.
    data_dir: a folder of `<language code>.txt` files, or None.
    batch_size: sequences per batch; None takes the run's batch size.
    task: a registered seqio task or mixture, or None. Without `data_dir`
      and `task` the run's own mixture is read.
    task_modules: modules to import before `task` is looked up.
    split: the split of `task` or of the run's mixture; default validation.

  Raises:
    ConfigError: a module that cannot be imported, or an unknown task.
  """
  # pylint: disable=g-import-not-at-top
  import importlib
  from sutra_jax.data import pipeline
  from sutra_jax.data import text_files
  from sutra_jax.eval import perplexity as perplexity_lib
  from sutra_jax.inference import loading
  # pylint: enable=g-import-not-at-top

  loading.check_run_dir(checkpoint_dir)
  for module in task_modules:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ConfigError(f"cannot import --task_module {module!r}: {e}") from e
  run = loading.load_run(checkpoint_dir, step)
  table = run.language_table
  split = split or "validation"
  if data_dir:
    name = text_files.register_text_dir_mixture(data_dir, run.vocabulary,
                                                table)
  else:
    name = task or run.phase.mixture
  dataset = pipeline.get_dataset(
      name, split=split, sequence_length=run.phase.sequence_length,
      batch_size=batch_size or run.phase.batch_size, language_table=table,
      shuffle=False, seed=0, repeat=False)
  results = perplexity_lib.per_language_perplexity(
      run.model, pipeline.as_numpy_batches(dataset), table)
  return {"checkpoint_dir": checkpoint_dir, "step": run.step,
          "data": data_dir or f"{name}:{split}",
          "per_language": results}


def multiple_choice(command: str) -> dict:
  """Runs `mmlu` or `xcopa` with the command-line flags."""
  # pylint: disable=g-import-not-at-top
  from sutra_jax.eval import benchmarks
  # pylint: enable=g-import-not-at-top

  options = benchmarks.Options(
      split=_SPLIT.value, num_shots=_NUM_SHOTS.value, scoring=_SCORING.value,
      normalization=_NORMALIZATION.value, language=_LANGUAGE.value,
      max_questions=_MAX_QUESTIONS.value)
  return benchmarks.run(
      command, _CHECKPOINT_DIR.value, _STEP.value, _DATA_DIR.value, options,
      batch_size=_BATCH_SIZE.value or _MULTIPLE_CHOICE_BATCH_SIZE,
      max_length=_MAX_INPUT_LENGTH.value,
      fallback_language=_FALLBACK_LANGUAGE.value or None)


def format_alignment_table(report: dict) -> str:
  """Formats an `alignment` report as aligned text lines, in percent."""
  lines = ["language  en->x (%)  x->en (%)  sentences"]
  for code, r in sorted(report["per_language"].items()):
    lines.append(f"{code:<9} {100 * r['en_to_x']:>9.1f}  "
                 f"{100 * r['x_to_en']:>9.1f}  {r['count']:>9}")
  macro = report["macro_average"]
  lines.append(f"{'average':<9} {100 * macro['en_to_x']:>9.1f}  "
               f"{100 * macro['x_to_en']:>9.1f}")
  return "\n".join(lines)


def alignment(checkpoint_dir: str, step: int | None, parallel_dir: str,
              batch_size: int | None, max_length: int) -> dict:
  """Checks the parallel files, loads the run and returns retrieval results.

  Raises:
    DataError: a missing folder, no English file or misaligned files.
    CheckpointError: a missing or invalid run directory.
  """
  # pylint: disable=g-import-not-at-top
  from sutra_jax.eval import alignment as alignment_lib
  from sutra_jax.inference import loading
  # pylint: enable=g-import-not-at-top

  files = alignment_lib.find_parallel_files(parallel_dir)
  loading.check_run_dir(checkpoint_dir)
  run = loading.load_run(checkpoint_dir, step)
  if alignment_lib.ENGLISH not in run.language_table:
    raise DataError(f"the run {checkpoint_dir!r} has no English "
                    f"({alignment_lib.ENGLISH!r}) in its language table, "
                    "which alignment retrieves against")
  files = alignment_lib.keep_known_languages(files, run.language_table)
  results = alignment_lib.alignment(
      run.model, run.vocabulary, run.language_table, files,
      batch_size=batch_size or _ALIGNMENT_BATCH_SIZE, max_length=max_length)
  return dict(results, checkpoint_dir=checkpoint_dir, step=run.step,
              data=parallel_dir, max_length=max_length)


def main(argv: Sequence[str]) -> int:
  command = _check_flags(argv)
  if command in MULTIPLE_CHOICE:
    # pylint: disable=g-import-not-at-top
    from sutra_jax.eval import benchmarks
    # pylint: enable=g-import-not-at-top
    report = multiple_choice(command)
    if _JSON.value:
      print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
      print(benchmarks.format_report(report))
    sys.stdout.flush()
    return 0
  if command == "alignment":
    report = alignment(_CHECKPOINT_DIR.value, _STEP.value,
                       _PARALLEL_DIR.value, _BATCH_SIZE.value,
                       _MAX_LENGTH.value)
    table = format_alignment_table(report)
  else:
    report = perplexity(_CHECKPOINT_DIR.value, _STEP.value, _DATA_DIR.value,
                        _BATCH_SIZE.value, _TASK.value, _TASK_MODULE.value,
                        _SPLIT.value)
    table = format_table(report["per_language"])
  if _JSON.value:
    print(json.dumps(report, ensure_ascii=False, indent=2))
  else:
    print(f"{report['checkpoint_dir']} step {report['step']} on "
          f"{report['data']}")
    print(table)
  sys.stdout.flush()
  return 0


def run() -> None:
  """Console-script entry point of `sutra-eval`."""
  common.run_main(main)


if __name__ == "__main__":
  run()
