"""The `mmlu` and `xcopa` commands of sutra-eval: files in, report out.

`load_questions` reads and checks a benchmark folder (before any model is
loaded, so a bad file fails fast), `run` restores a trained run and scores
the questions with rank classification, and `format_report` prints the
result as tables.
"""

import dataclasses

from absl import logging

from sutra_jax.errors import ConfigError
from sutra_jax.eval import mmlu
from sutra_jax.eval import multiple_choice as mc
from sutra_jax.eval import xcopa

MMLU = "mmlu"
XCOPA = "xcopa"
BENCHMARKS = (MMLU, XCOPA)
# Defaults of the usual setups: 5-shot letter scoring for MMLU, zero-shot
# answer scoring for XCOPA.
DEFAULT_SHOTS = {MMLU: 5, XCOPA: 0}
DEFAULT_SCORING = {MMLU: mc.LETTER, XCOPA: mc.ANSWER}


@dataclasses.dataclass(frozen=True)
class Options:
  """Settings of a multiple-choice evaluation.

  Attributes:
    split: the split to evaluate; None picks test if present, else val.
    num_shots: solved examples per prompt; None uses the benchmark default.
    scoring: `letter` or `answer`; None uses the benchmark default.
    normalization: `none`, `token` or `char` length normalisation.
    language: language code of a single-language MMLU folder; None takes it
      from the folder name.
    max_questions: evaluate only the first N questions of each subject
      (MMLU) or language (XCOPA); 0 evaluates all.
  """

  split: str | None = None
  num_shots: int | None = None
  scoring: str | None = None
  normalization: str = mc.NORMALIZE_NONE
  language: str | None = None
  max_questions: int = 0

  def resolved(self, benchmark: str) -> "Options":
    """Fills the benchmark defaults and checks the values.

    Raises:
      ConfigError: an unknown benchmark, scoring or normalisation, or a
        negative count.
    """
    if benchmark not in BENCHMARKS:
      raise ConfigError(f"unknown benchmark {benchmark!r}: expected one of "
                        f"{', '.join(BENCHMARKS)}")
    options = dataclasses.replace(
        self,
        num_shots=(DEFAULT_SHOTS[benchmark] if self.num_shots is None
                   else self.num_shots),
        scoring=self.scoring or DEFAULT_SCORING[benchmark])
    if options.scoring not in mc.SCORING_MODES:
      raise ConfigError(f"invalid --scoring {options.scoring!r}: expected "
                        f"one of {', '.join(mc.SCORING_MODES)}")
    if options.normalization not in mc.NORMALIZATIONS:
      raise ConfigError(f"invalid --normalization {options.normalization!r}:"
                        f" expected one of {', '.join(mc.NORMALIZATIONS)}")
    for name in ("num_shots", "max_questions"):
      if getattr(options, name) < 0:
        raise ConfigError(f"invalid --{name} {getattr(options, name)}: "
                          "expected an integer >= 0")
    return options


def _first_per_subject(items, limit: int):
  if not limit:
    return items
  counts: dict[str, int] = {}
  kept = []
  for item in items:
    if counts.get(item.subject, 0) < limit:
      kept.append(item)
      counts[item.subject] = counts.get(item.subject, 0) + 1
  return kept


def load_questions(benchmark: str, data_dir: str,
                   options: Options) -> tuple[str, dict]:
  """Reads a benchmark folder and builds the prompts of every language.

  Args:
    benchmark: `mmlu` or `xcopa`.
    data_dir: the benchmark folder.
    options: resolved settings (see `Options.resolved`).

  Returns:
    (the split, `{language code: [Question]}`).

  Raises:
    DataError: missing or malformed files (the message names file and row).
  """
  if benchmark == MMLU:
    languages = mmlu.read_mmlu(data_dir, options.language)
    split = mmlu.choose_split(languages, options.split)
    questions = {
        code: mmlu.make_questions(
            _first_per_subject(splits[split], options.max_questions),
            splits.get("dev", []), code, options.num_shots, options.scoring)
        for code, splits in languages.items()}
    return split, questions
  split, files = xcopa.find_files(data_dir, options.split)
  questions = {}
  for code, path in sorted(files.items()):
    items = xcopa.read_file(path)
    if options.max_questions:
      items = items[:options.max_questions]
    questions[code] = xcopa.make_questions(items, code, options.num_shots,
                                           options.scoring)
  return split, questions


def run(benchmark: str, checkpoint_dir: str, step: int | None,
        data_dir: str, options: Options, *, batch_size: int,
        max_length: int, fallback_language: str | None) -> dict:
  """Evaluates a trained run on a benchmark folder.

  Args:
    benchmark: `mmlu` or `xcopa`.
    checkpoint_dir: a sutra-train run directory.
    step: the checkpoint step; None takes the newest.
    data_dir: the benchmark folder.
    options: evaluation settings.
    batch_size: sequences per forward pass.
    max_length: maximum model input tokens per sequence; longer prompts
      lose their start.
    fallback_language: blocks used for languages the model lacks.

  Returns:
    The report: settings, per-language and per-subject accuracy and count,
    macro average, standard deviation across languages and the agreement
    on parallel questions.
  """
  options = options.resolved(benchmark)
  split, questions = load_questions(benchmark, data_dir, options)
  # Imported after the files are checked, because TensorFlow and JAX take
  # seconds to import.
  # pylint: disable=g-import-not-at-top
  from sutra_jax.eval import rank_classification
  from sutra_jax.eval import scoring
  from sutra_jax.inference import loading
  # pylint: enable=g-import-not-at-top

  loading.check_run_dir(checkpoint_dir)
  loaded = loading.load_run(checkpoint_dir, step)
  scorer = scoring.ModelScorer(
      loaded.model, loaded.language_table, batch_size=batch_size,
      max_length=max_length, fallback_language=fallback_language)
  logging.info("Evaluating %s (%s split) in %d languages", benchmark, split,
               len(questions))
  results = rank_classification.evaluate(
      questions, benchmark, loaded.vocabulary, split, scorer,
      options.normalization)
  results.pop("predictions")
  return dict(
      results, benchmark=benchmark, checkpoint_dir=checkpoint_dir,
      step=loaded.step, data=data_dir, split=split,
      num_shots=options.num_shots, scoring=options.scoring,
      normalization=options.normalization,
      routed_languages=dict(scorer.routed_languages))


def _percent(value) -> str:
  return "-" if value is None else f"{100 * value:.1f}"


def format_report(report: dict) -> str:
  """Formats a `run` report: languages, then subjects, then the summary."""
  lines = [f"{report['checkpoint_dir']} step {report['step']}: "
           f"{report['benchmark']} {report['split']} from {report['data']}, "
           f"{report['num_shots']}-shot, {report['scoring']} scoring, "
           f"normalization {report['normalization']}",
           "", "language  accuracy (%)  questions  routed as"]
  for code, result in report["per_language"].items():
    routed = report["routed_languages"].get(code, "")
    lines.append(f"{code:<9} {_percent(result['accuracy']):>12}  "
                 f"{result['count']:>9}  {routed}")
  lines += ["", f"{'subject':<40} accuracy (%)  questions"]
  for subject, result in report["per_subject"].items():
    lines.append(f"{subject:<40} {_percent(result['accuracy']):>12}  "
                 f"{result['count']:>9}")
  parallel = report["parallel"]
  if parallel["agreement"] is None:
    agreement = "- (needs parallel questions in two or more languages)"
  else:
    agreement = (f"{_percent(parallel['agreement'])} % of "
                 f"{parallel['questions']} parallel questions")
  lines += ["",
            f"macro average over languages  {_percent(report['macro_average'])}"
            " %",
            f"std across languages          {_percent(report['accuracy_std'])}"
            " %",
            f"same answer in every language {agreement}"]
  return "\n".join(lines)
