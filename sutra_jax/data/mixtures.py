"""Temperature-sampled seqio Mixtures, one per training phase.

Each task of a mixture is one (source, language) or (source, language pair),
and its mixing rate is ∝ n^(1/T), where n is its number of `train` examples
and T the temperature. T = 1 samples in proportion to size and a larger T
moves towards uniform, so small languages are not starved. Rates are
normalised to sum to 1, and `rate_overrides` can then fix the rate of chosen
tasks. The other tasks share the rest of the mass in the same proportions.

The mixture samples from task datasets that repeat, so it keeps going after a
small task has been read once. With `num_epochs=1` (no repetition) it reads
every task to its end, because the sampler skips exhausted tasks instead of
stopping.

`phase_mixture` mixes tasks of the embedded demo corpus, `source_mixture` the
tasks of file and TFDS sources (`sutra_jax.data.sources`).
"""

import functools
import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from absl import logging
import gin

from sutra_jax import languages
from sutra_jax.data import corpus
from sutra_jax.errors import ConfigError

# seqio and TensorFlow are imported inside the functions that use them, so
# that importing this module to register `phase_mixture` with gin stays cheap.
if TYPE_CHECKING:
  import seqio

# mT5 (Xue et al., 2021) samples languages with probability ∝ n^0.3, that is
# a temperature of 1 / 0.3.
DEFAULT_TEMPERATURE = 1 / 0.3

# The lexicon task kinds of `sutra_jax.data.tasks`: translation in either
# direction (the default of `phase_mixture`) and parallel pairs for the
# concept-consistency loss.
LEXICON_KINDS = ("lexicon_from_en", "lexicon_to_en")
ALL_LEXICON_KINDS = LEXICON_KINDS + ("parallel",)


def skip_exhausted_sampler():
  """Returns a sampler that skips exhausted datasets.

  seqio's default sampler ends the mixture at the first exhausted task.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return functools.partial(tf.data.Dataset.sample_from_datasets,
                           stop_on_empty_dataset=False)


def temperature_rates(
    num_examples: Mapping[str, int],
    temperature: float,
    rate_overrides: Mapping[str, float] | None = None,
    where: str = "rate_overrides",
) -> dict[str, float]:
  """Computes mixing rates ∝ num_examples^(1/temperature), summing to 1.

  Args:
    num_examples: training examples by task name.
    temperature: a positive number; `math.inf` gives uniform rates.
    rate_overrides: fixed rates for some tasks, each in [0, 1] and summing to
      at most 1. The other tasks share the remaining mass ∝ n^(1/T).
    where: the configuration field of `rate_overrides`, for error messages.

  Returns:
    The rate of each task in `num_examples`.

  Raises:
    ConfigError: a non-positive temperature, an override for an unknown task,
      or overrides that are negative or sum to more than 1.
  """
  if not temperature > 0:
    raise ConfigError(f"invalid temperature {temperature!r}: expected a "
                      "positive number; 1 samples in proportion to task size")
  overrides = dict(rate_overrides or {})
  for name, rate in overrides.items():
    if name not in num_examples:
      raise ConfigError(f"{where} names {name!r}, which is not in the "
                        f"mixture; use one of {', '.join(num_examples)}")
    if not 0 <= rate <= 1:
      raise ConfigError(f"invalid rate {rate!r} for {name!r} in {where}: "
                        "expected a fraction from 0 to 1")
  fixed_mass = sum(overrides.values())
  if fixed_mass > 1 + 1e-9:
    raise ConfigError(f"the rates in {where} sum to {fixed_mass:g}; they "
                      "must sum to at most 1")

  exponent = 0.0 if math.isinf(temperature) else 1 / temperature
  weights = {name: float(n)**exponent
             for name, n in num_examples.items() if name not in overrides}
  total_weight = sum(weights.values())
  rates = dict(overrides)
  for name, weight in weights.items():
    rates[name] = ((1 - fixed_mass) * weight / total_weight
                   if total_weight else 0.0)
  return {name: rates[name] for name in num_examples}


def _train_size(name: str, overridden: bool) -> int:
  """Returns the train examples of a task; 0 if unknown but overridden."""
  import seqio  # pylint: disable=g-import-not-at-top
  try:
    count = seqio.get_mixture_or_task(name).num_input_examples("train")
  except ValueError as e:
    raise ConfigError(f"unknown seqio task {name!r} in a mixture: "
                      f"{str(e).strip()}; register it first") from None
  if count is None and not overridden:
    raise ConfigError(f"task {name!r} does not report its number of train "
                      "examples; give it a rate in rate_overrides")
  return count or 0


def register_mixture(
    name: str,
    task_names: Sequence[str],
    temperature: float = DEFAULT_TEMPERATURE,
    rate_overrides: Mapping[str, float] | None = None,
    where: str = "rate_overrides",
) -> "seqio.Mixture":
  """Registers a temperature-sampled mixture of registered seqio tasks.

  Registering the same name again with the same rates keeps the existing
  mixture. With other rates it replaces it.

  Args:
    name: the mixture name.
    task_names: registered seqio task names.
    temperature: see `temperature_rates`.
    rate_overrides: fixed rates by task name; see `temperature_rates`.
    where: the configuration field of `rate_overrides`, for error messages.

  Returns:
    The registered mixture.

  Raises:
    ConfigError: no tasks, an unregistered task, a task without an example
      count and without an override, or invalid rates.
  """
  import seqio  # pylint: disable=g-import-not-at-top

  if not task_names:
    raise ConfigError(f"mixture {name!r} has no tasks; give it at least one "
                      "language")
  overrides = rate_overrides or {}
  sizes = {t: _train_size(t, t in overrides) for t in task_names}
  rates = temperature_rates(sizes, temperature, rate_overrides, where)
  if name in seqio.MixtureRegistry.names():
    existing = seqio.MixtureRegistry.get(name)
    if dict(existing.rate_per_task_name) == rates:
      return existing
    logging.info("Replacing mixture %s with new rates", name)
    seqio.MixtureRegistry.remove(name)
  for task_name, rate in rates.items():
    logging.info("Mixture %s: %s has %d train examples, rate %.4f", name,
                 task_name, sizes[task_name], rate)
  return seqio.MixtureRegistry.add(name, list(rates.items()),
                                   sample_fn=skip_exhausted_sampler())


def _check_demo_codes(codes: Sequence[str], available: Sequence[str],
                      table: languages.LanguageTable, where: str,
                      data_name: str) -> tuple[str, ...]:
  codes = languages.check_codes(tuple(codes), table, where)
  for code in codes:
    if code not in available:
      raise ConfigError(f"no demo {data_name} for language code {code!r} in "
                        f"{where}: demo {data_name} exist for "
                        f"{', '.join(available)}")
  return codes


@gin.configurable
def phase_mixture(
    name: str = gin.REQUIRED,
    vocabulary: "seqio.Vocabulary | str" = gin.REQUIRED,
    chat_languages: Sequence[str] = (),
    lexicon_languages: Sequence[str] = (),
    lexicon_kinds: Sequence[str] = LEXICON_KINDS,
    temperature: float = DEFAULT_TEMPERATURE,
    rate_overrides: Mapping[str, float] | None = None,
    language_table: languages.LanguageTable | None = None,
) -> str:
  """Registers the demo tasks and mixture of a phase; returns its name.

  In a gin file, for example:

      PhaseConfig.mixture = @phase_mixture()
      phase_mixture.name = "phase2_language"
      phase_mixture.vocabulary = "runs/demo/spm.model"
      phase_mixture.chat_languages = ["en", "hi", "ta"]
      phase_mixture.lexicon_languages = ["hi", "ta"]

  Args:
    name: the mixture name; the registered name adds the vocabulary key, as
      task names do (see `sutra_jax.data.tasks`).
    vocabulary: a seqio vocabulary or the path of a SentencePiece model.
    chat_languages: languages whose conversations are mixed in.
    lexicon_languages: languages whose English↔X name pairs are mixed in.
    lexicon_kinds: lexicon tasks: translation `lexicon_from_en` (English
      -> X) and `lexicon_to_en` (X -> English), and `parallel`, the same
      pairs as two segments for the concept-consistency loss.
    temperature: sampling temperature over tasks (see `temperature_rates`);
      the default 1/0.3 follows mT5.
    rate_overrides: fixed rates by task name without the vocabulary key, such
      as `{"chat_en": 0.2}`.
    language_table: the model's languages; defaults to the gin-bound
      `language_table()`.

  Returns:
    The registered mixture name.

  Raises:
    ConfigError: an unknown language code or task kind, no languages, or
      invalid rates. The message names the gin parameter.
    DataError: the vocabulary file is missing or unusable.
  """
  table = language_table or languages.language_table()
  chat_codes = _check_demo_codes(chat_languages, languages.DEMO_LANGUAGES,
                                 table, "phase_mixture.chat_languages",
                                 "conversations")
  lexicon_codes = _check_demo_codes(lexicon_languages,
                                    corpus.lexicon_languages(), table,
                                    "phase_mixture.lexicon_languages",
                                    "lexicon")
  if lexicon_codes and "en" not in table:
    raise ConfigError("phase_mixture.lexicon_languages needs English, but "
                      "'en' is not in language_table.languages; add it")
  for kind in lexicon_kinds:
    if kind not in ALL_LEXICON_KINDS:
      raise ConfigError(f"unknown kind {kind!r} in phase_mixture."
                        f"lexicon_kinds: use {', '.join(ALL_LEXICON_KINDS)}")
  if not chat_codes and not lexicon_codes:
    raise ConfigError(f"phase_mixture {name!r} has no languages: set "
                      "phase_mixture.chat_languages or lexicon_languages")
  if not temperature > 0:
    raise ConfigError(f"invalid phase_mixture.temperature {temperature!r}: "
                      "expected a positive number; 1 samples in proportion "
                      "to task size")

  from sutra_jax.data import tasks  # pylint: disable=g-import-not-at-top

  vocabulary = tasks.as_vocabulary(vocabulary)
  task_names = tasks.register_demo_tasks(vocabulary, chat_codes,
                                         kinds=(tasks.CHAT,))[tasks.CHAT]
  lexicon_names = tasks.register_demo_tasks(vocabulary, lexicon_codes,
                                            kinds=tuple(lexicon_kinds))
  for kind in lexicon_kinds:
    task_names += lexicon_names[kind]

  suffix = ".vocab_" + tasks.vocabulary_key(vocabulary)
  base_names = [n.removesuffix(suffix) for n in task_names]
  for base in rate_overrides or {}:
    if base not in base_names:
      raise ConfigError(
          f"phase_mixture.rate_overrides names {base!r}, which is not in "
          f"mixture {name!r}; use one of {', '.join(base_names)}")
  full_overrides = {
      base + suffix: rate for base, rate in (rate_overrides or {}).items()
  }
  mixture_name = name + suffix
  register_mixture(mixture_name, task_names, temperature, full_overrides,
                   where="phase_mixture.rate_overrides")
  return mixture_name


@gin.configurable
def source_mixture(
    name: str = gin.REQUIRED,
    vocabulary: "seqio.Vocabulary | str" = gin.REQUIRED,
    sources: Sequence[Mapping[str, Any]] = gin.REQUIRED,
    temperature: float = DEFAULT_TEMPERATURE,
    rate_overrides: Mapping[str, float] | None = None,
    language_table: languages.LanguageTable | None = None,
) -> str:
  """Registers the tasks of some sources and their mixture; returns its name.

  In a gin file, for example:

      PhaseConfig.mixture = @source_mixture()
      source_mixture.name = "pretrain"
      source_mixture.vocabulary = "gs://bucket/spm.model"
      source_mixture.sources = [
          {"kind": "tfds", "name": "wiki", "languages": ["en", "hi"],
           "dataset": "wiki40b/{language}:1.3.0", "cleaner": "wiki40b",
           "data_dir": "gs://bucket/tfds"},
          {"kind": "jsonl", "name": "web", "path": "gs://bucket/web"},
      ]
      source_mixture.rate_overrides = {"wiki_en": 0.1}

  Args:
    name: the mixture name; the registered name adds the vocabulary key.
    vocabulary: a seqio vocabulary or the path of a SentencePiece model.
    sources: source specs (see `sutra_jax.data.sources`).
    temperature: sampling temperature over tasks, rate ∝ n^(1/T) (see
      `temperature_rates`).
    rate_overrides: fixed rates by task name without the vocabulary key.
    language_table: the model's languages; defaults to the gin-bound
      `language_table()`.

  Returns:
    The registered mixture name.

  Raises:
    ConfigError: an invalid spec, rate or language.
    DataError: missing files or TFDS data, or no valid example.
  """
  # Imported here: sources and tasks import TensorFlow (see the top).
  from sutra_jax.data import sources as sources_lib  # pylint: disable=g-import-not-at-top
  from sutra_jax.data import tasks  # pylint: disable=g-import-not-at-top

  table = language_table or languages.language_table()
  vocabulary = tasks.as_vocabulary(vocabulary)
  registered = sources_lib.register_sources(sources, vocabulary, table)
  suffix = ".vocab_" + tasks.vocabulary_key(vocabulary)
  base_names = [t.name.removesuffix(suffix) for t in registered]
  for base in rate_overrides or {}:
    if base not in base_names:
      raise ConfigError(
          f"source_mixture.rate_overrides names {base!r}, which is not in "
          f"mixture {name!r}; use one of {', '.join(base_names)}")
  overrides = {base + suffix: rate
               for base, rate in (rate_overrides or {}).items()}
  mixture_name = name + suffix
  register_mixture(mixture_name, [t.name for t in registered],
                            temperature, overrides,
                            where="source_mixture.rate_overrides")
  return mixture_name
