"""seqio Tasks from a gin-readable list of data sources.

`sutra_jax.data.mixtures.source_mixture` registers them as a phase mixture.

Each source is a dict. Its `kind` says where the data is and `name` prefixes
its task names. A source gives one task per language or language pair:

    {"kind": "text", "name": "web", "path": "/data/web"}
        A folder of `<code>.txt` files or `<code>/` folders of `.txt` files,
        one example per line.
    {"kind": "jsonl", "name": "web", "path": "/data/web/*.jsonl",
     "text_field": "text", "language_field": "language"}
        One JSON object per line. A record without a language field takes
        the language of its file name. `source_field` (with
        `source_language_field`) makes each record a translation pair.
    {"kind": "tfrecord", "name": "web", "path": "/data/web"}
        tf.train.Example records with the same fields as JSONL.
    {"kind": "tfds", "name": "wiki", "dataset": "wiki40b/{language}:1.3.0",
     "languages": ["hi", "ta"], "cleaner": "wiki40b"}
        A text feature (`text_feature`, default `text`) of a TFDS dataset,
        one task per language. `{language}` in `dataset` and in the split
        names is replaced by each language code.
    {"kind": "tfds_parallel", "name": "ted", "pairs": [["pt", "en"]],
     "dataset": "ted_hrlr_translate/{source}_to_{target}:1.0.0"}
        Two features of a TFDS translation dataset, by default named by the
        two codes (`source_feature`, `target_feature` are templates).

Every kind takes `languages` to keep only some languages (of a pair, the
target language). File kinds take `validation_path` for a validation split.
TFDS kinds take `splits` (seqio split -> TFDS split, default `train` and
`validation`), `data_dir`, `download` (default false, so nothing downloads)
and `num_examples` (train examples per language, for datasets whose metadata
has no counts).

Task names are `<name>_<code>` or `<name>_<source>_<target>` with `-` in codes
replaced by `_`, plus the vocabulary key of `sutra_jax.data.tasks`, such as
`wiki_hi.vocab_1a2b3c4d`.
"""

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import seqio

from sutra_jax import languages
from sutra_jax.data import file_sources
from sutra_jax.data import tasks
from sutra_jax.errors import ConfigError

FILE_KINDS = file_sources.FORMATS
TFDS_KINDS = ("tfds", "tfds_parallel")
KINDS = FILE_KINDS + TFDS_KINDS

_COMMON_KEYS = {"kind", "name", "languages"}
_ALLOWED_KEYS = {
    "file": _COMMON_KEYS | {"path", "validation_path", "text_field",
                           "language_field", "source_field",
                           "source_language_field"},
    "tfds": _COMMON_KEYS | {"dataset", "splits", "data_dir", "download",
                           "num_examples", "text_feature", "cleaner"},
    "tfds_parallel": _COMMON_KEYS | {"dataset", "splits", "data_dir",
                                    "download", "num_examples", "pairs",
                                    "source_feature", "target_feature"},
}
_DEFAULT_TFDS_SPLITS = {"train": "train", "validation": "validation"}


@dataclasses.dataclass(frozen=True)
class SourceTask:
  """A registered task of a source spec.

  Attributes:
    name: the registered seqio name.
    source_name: the spec's `name`.
    inputs_language: the language of `inputs` (the target language for
      monolingual text, whose `inputs` are empty).
    targets_language: the language of `targets`.
  """

  name: str
  source_name: str
  inputs_language: str
  targets_language: str


_SOURCE_TASKS: dict[str, SourceTask] = {}


def source_task(name: str) -> SourceTask | None:
  """Returns the metadata of a task registered from a spec, or None."""
  return _SOURCE_TASKS.get(name)


def base_name(source_name: str, pair: file_sources.Pair) -> str:
  """Returns a task name without the vocabulary key."""
  codes = [c for c in pair if c is not None]
  return "_".join([source_name] + [c.replace("-", "_") for c in codes])


# --- spec checks ------------------------------------------------------------


def _where(index: int, spec: Mapping[str, Any]) -> str:
  return f"source {index} ({spec.get('name', 'unnamed')!r})"


def _check_spec(index: int, spec: Any) -> str:
  """Validates the keys of one spec; returns its kind."""
  if not isinstance(spec, Mapping):
    raise ConfigError(f"source {index} is {spec!r}; each source must be a "
                      "dict with at least 'kind' and 'name'")
  where = _where(index, spec)
  kind = spec.get("kind")
  if kind not in KINDS:
    raise ConfigError(f"{where} has kind {kind!r}: use one of "
                      f"{', '.join(KINDS)}")
  name = spec.get("name")
  if not isinstance(name, str) or not name.isidentifier():
    raise ConfigError(f"{where} has name {name!r}: use a name of letters, "
                      "digits and underscores, such as 'wiki'")
  allowed = _ALLOWED_KEYS["file" if kind in FILE_KINDS else kind]
  unknown = sorted(set(spec) - allowed)
  if unknown:
    raise ConfigError(f"{where} has unknown keys {', '.join(unknown)}; a "
                      f"{kind} source takes {', '.join(sorted(allowed))}")
  required = {"text": ["path"], "jsonl": ["path"], "tfrecord": ["path"],
              "tfds": ["dataset", "languages"],
              "tfds_parallel": ["dataset", "pairs"]}[kind]
  for key in required:
    if not spec.get(key):
      raise ConfigError(f"{where} needs {key!r}")
  for code in spec.get("languages") or ():
    languages.validate_code(code)
  return kind


def _check_languages(task: SourceTask, table: languages.LanguageTable | None,
                     where: str) -> None:
  if table is not None:
    languages.check_codes([task.inputs_language, task.targets_language],
                          table, f"the languages of {where}")


# --- sources of each kind ---------------------------------------------------


def _file_sources(spec: Mapping[str, Any]
                  ) -> dict[file_sources.Pair, seqio.DataSource]:
  fields = file_sources.Fields(
      text=spec.get("text_field", "text"),
      language=spec.get("language_field", "language"),
      source=spec.get("source_field"),
      source_language=spec.get("source_language_field", "source_language"))
  split_paths = {"train": spec["path"]}
  if spec.get("validation_path"):
    split_paths["validation"] = spec["validation_path"]
  return file_sources.pair_sources(split_paths, spec["kind"], fields)


def _tfds_splits(spec: Mapping[str, Any], **names: str) -> dict[str, str]:
  # Imported here so that file sources work without loading TFDS.
  from sutra_jax.data import tfds_sources  # pylint: disable=g-import-not-at-top
  splits = spec.get("splits") or _DEFAULT_TFDS_SPLITS
  return {split: tfds_sources.format_name(tfds_split, **names)
          for split, tfds_split in splits.items()}


def _tfds_kwargs(spec: Mapping[str, Any], key: str) -> dict[str, Any]:
  count = spec.get("num_examples")
  if isinstance(count, Mapping):
    count = count.get(key)
  return {"data_dir": spec.get("data_dir"),
          "download": bool(spec.get("download", False)),
          "num_examples": {"train": count} if count else None}


def _tfds_sources(spec: Mapping[str, Any]
                  ) -> dict[file_sources.Pair, seqio.DataSource]:
  from sutra_jax.data import tfds_sources  # pylint: disable=g-import-not-at-top
  sources = {}
  if spec["kind"] == "tfds":
    for code in spec["languages"]:
      sources[(None, code)] = tfds_sources.TfdsTextSource(
          tfds_sources.format_name(spec["dataset"], language=code),
          _tfds_splits(spec, language=code),
          text_feature=spec.get("text_feature", "text"),
          cleaner=spec.get("cleaner", "none"), **_tfds_kwargs(spec, code))
    return sources
  for pair in spec["pairs"]:
    if len(pair) != 2:
      raise ConfigError(f"invalid pair {pair!r} in source {spec['name']!r}: "
                        "give [source code, target code]")
    source, target = (languages.validate_code(c) for c in pair)
    names = {"source": source, "target": target}
    sources[(source, target)] = tfds_sources.TfdsParallelSource(
        tfds_sources.format_name(spec["dataset"], **names),
        _tfds_splits(spec, **names),
        source_feature=tfds_sources.format_name(
            spec.get("source_feature", "{source}"), **names),
        target_feature=tfds_sources.format_name(
            spec.get("target_feature", "{target}"), **names),
        **_tfds_kwargs(spec, f"{source}-{target}"))
  return sources


# --- registration -----------------------------------------------------------


def _register_task(source_name: str, pair: file_sources.Pair,
                   source: seqio.DataSource,
                   vocabulary: seqio.Vocabulary) -> SourceTask:
  source_language, language = pair
  info = SourceTask(
      name=(f"{base_name(source_name, pair)}.vocab_"
            f"{tasks.vocabulary_key(vocabulary)}"),
      source_name=source_name,
      inputs_language=source_language or language,
      targets_language=language)
  if info.name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(info.name)  # The files may have changed.
  train_size = source.num_input_examples("train") or 0
  seqio.TaskRegistry.add(
      info.name,
      source=source,
      output_features=tasks.output_features(
          vocabulary, inputs_add_eos=source_language is not None),
      preprocessors=[
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
          functools.partial(tasks.add_language_features,
                            inputs_language=info.inputs_language,
                            targets_language=info.targets_language),
      ],
      # Whole-split shuffling for small tasks; a 10,000-example window
      # for large ones, whose files already spread languages and topics.
      shuffle_buffer_size=min(max(train_size, 1), 10_000))
  _SOURCE_TASKS[info.name] = info
  return info


def register_sources(
    sources: Sequence[Mapping[str, Any]],
    vocabulary: "seqio.Vocabulary | str",
    language_table: languages.LanguageTable | None = None,
) -> list[SourceTask]:
  """Registers one seqio task per language or pair of each source spec.

  Args:
    sources: source specs (see the module docstring).
    vocabulary: a seqio vocabulary or the path of a SentencePiece model.
    language_table: if set, every task language must be in it.

  Returns:
    The registered tasks, in spec order and then by language.

  Raises:
    ConfigError: an invalid spec or a language missing from the table.
    DataError: missing files or TFDS data, or no valid example.
  """
  if not sources:
    raise ConfigError("no data sources: give at least one source spec")
  kinds = [_check_spec(i, spec) for i, spec in enumerate(sources)]
  names = [spec["name"] for spec in sources]
  for name in set(names):
    if names.count(name) > 1:
      raise ConfigError(f"two sources are named {name!r}; give each source "
                        "its own name")
  vocabulary = tasks.as_vocabulary(vocabulary)
  registered = []
  for index, (kind, spec) in enumerate(zip(kinds, sources)):
    by_pair = (_file_sources(spec) if kind in FILE_KINDS
               else _tfds_sources(spec))
    wanted = spec.get("languages")
    for pair, source in by_pair.items():
      if wanted and pair[1] not in wanted:
        continue
      task = _register_task(spec["name"], pair, source, vocabulary)
      _check_languages(task, language_table, _where(index, spec))
      registered.append(task)
  return registered
