"""seqio data sources over user files: plain text, JSONL and TFRecord.

Every format is read record by record into examples of one language or one
language pair:

* `text`: one example per line. The language is the file's language, taken
  from its name (`hi.txt`) or the name of its folder (`hi/part-0.txt`).
* `jsonl`: one JSON object per line, such as `{"text": "...", "language":
  "hi"}`. The language field is optional and falls back to the file's
  language. With a source field (`{"source": "...", "source_language":
  "en", "text": "...", "language": "hi"}`) the example is a translation
  pair: the source becomes `inputs`, the text `targets`.
* `tfrecord`: serialized `tf.train.Example` protos whose bytes features use
  the same field names as JSONL.

`scan_files` reads the files once, counts the examples of each language pair
and warns about every record it skips (invalid UTF-8, malformed JSON, no text
field, unknown language), naming the file and the line or record number.
`FileSource` then streams the records of one language pair and skips the same
records without warning again.

Sharding (`seqio.ShardInfo`) is exact. When a pair's data lies in at least as
many files as there are shards, shard k reads files k, k + n, k + 2n, ...
Otherwise every shard reads all files and keeps records k, k + n, ... of the
pair's records in file order. Either way the shards are disjoint and together
cover every record once.
"""

import collections
import dataclasses
import json
import os
from typing import Iterator, Mapping, Sequence

from absl import logging
import seqio
import tensorflow as tf

from sutra_jax import languages
from sutra_jax.errors import ConfigError
from sutra_jax.errors import DataError

FORMATS = ("text", "jsonl", "tfrecord")
# File name endings searched when a spec names a folder.
EXTENSIONS = {"text": (".txt",), "jsonl": (".jsonl", ".json"),
              "tfrecord": (".tfrecord", ".tfrecords")}
# Warnings per file about skipped records; the count covers all of them.
MAX_WARNINGS_PER_FILE = 10

# Records per element of the generator dataset of `FileSource`.
_CHUNK = 1024

# (source language or None, language) of a monolingual or parallel example.
Pair = tuple[str | None, str]


@dataclasses.dataclass(frozen=True)
class Fields:
  """Names of the JSONL keys or tf.train.Example features of a record.

  Attributes:
    text: the text, which becomes `targets`.
    language: the language code of the text; optional in each record.
    source: the source text of a translation pair, which becomes `inputs`;
      None reads monolingual text only.
    source_language: the language code of the source text.
  """

  text: str = "text"
  language: str = "language"
  source: str | None = None
  source_language: str = "source_language"


@dataclasses.dataclass(frozen=True)
class Record:
  """One example read from a file, with its number in the file (from 1)."""

  number: int
  text: str
  pair: Pair
  source: str = ""


@dataclasses.dataclass
class FileScan:
  """Counts of one file, from `scan_files`.

  Attributes:
    path: the file.
    examples: examples by language pair.
    skipped: records skipped because they were invalid.
  """

  path: str
  examples: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)
  skipped: int = 0


# --- files and languages ----------------------------------------------------


def list_files(path: str, file_format: str) -> list[str]:
  """Lists the files of a folder, glob pattern or single file, sorted.

  A folder contributes its files and those of its subfolders (one level)
  whose names end with an extension of `file_format`.

  Raises:
    ConfigError: an unknown format.
    DataError: nothing matches `path`.
  """
  if file_format not in FORMATS:
    raise ConfigError(f"unknown file format {file_format!r}: use one of "
                      f"{', '.join(FORMATS)}")
  if tf.io.gfile.isdir(path):
    patterns = [os.path.join(path, prefix + "*" + ext)
                for prefix in ("", "*" + os.sep)
                for ext in EXTENSIONS[file_format]]
    files = [f for p in patterns for f in tf.io.gfile.glob(p)]
  else:
    files = tf.io.gfile.glob(path)
  files = sorted(f for f in set(files) if not tf.io.gfile.isdir(f))
  if not files:
    raise DataError(
        f"no {file_format} files found at {path!r}; pass a folder of "
        f"{' or '.join(EXTENSIONS[file_format])} files, a glob pattern or a "
        "file")
  return files


def _is_code(name: str) -> bool:
  try:
    languages.validate_code(name)
  except ConfigError:
    return False
  return True


def file_language(path: str) -> str | None:
  """Returns the language code in a file or folder name, or None.

  `hi.txt`, `hi.train.jsonl` and `hi/part-0.txt` are Hindi.
  """
  stem = os.path.basename(path).split(".")[0]
  if _is_code(stem):
    return stem
  folder = os.path.basename(os.path.dirname(path))
  return folder if _is_code(folder) else None


# --- reading records --------------------------------------------------------


def _raw_records(path: str, file_format: str) -> Iterator[tuple[int, bytes]]:
  """Yields (number from 1, raw bytes) of each line or TFRecord record."""
  if file_format == "tfrecord":
    dataset = tf.data.TFRecordDataset(path)
    for number, raw in enumerate(dataset.as_numpy_iterator(), start=1):
      yield number, raw
    return
  with tf.io.gfile.GFile(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      yield number, raw


def _decode(value: bytes) -> str:
  """Decodes UTF-8; raises ValueError on invalid bytes."""
  try:
    return value.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"invalid UTF-8 at byte {e.start}") from None


def _fields_of_example(raw: bytes, fields: Fields) -> dict[str, str]:
  """Reads the string fields of a serialized tf.train.Example."""
  try:
    example = tf.train.Example.FromString(raw)
  except Exception:  # pylint: disable=broad-except
    # protobuf raises its own DecodeError, whose module varies by backend.
    raise ValueError("not a serialized tf.train.Example") from None
  values = {}
  for key in (fields.text, fields.language, fields.source,
              fields.source_language):
    if key and key in example.features.feature:
      items = example.features.feature[key].bytes_list.value
      if len(items) == 1:
        values[key] = _decode(items[0])
  return values


def _fields_of_json(raw: bytes) -> dict[str, str]:
  try:
    value = json.loads(_decode(raw))
  except json.JSONDecodeError as e:
    raise ValueError(f"invalid JSON ({e.msg})") from None
  if not isinstance(value, dict):
    raise ValueError("not a JSON object")
  return value


def parse_record(raw: bytes, number: int, file_format: str, fields: Fields,
                 default_language: str | None) -> Record | None:
  """Parses one line or record; None for a blank line.

  Raises:
    ValueError: the record is invalid; the message gives the reason.
  """
  if file_format == "text":
    text = _decode(raw).rstrip("\r\n")
    if not text.strip():
      return None
    if default_language is None:
      raise ValueError("the file name has no language code")
    return Record(number, text, (None, default_language))

  if file_format == "jsonl":
    if not raw.strip():
      return None
    values = _fields_of_json(raw)
  else:
    values = _fields_of_example(raw, fields)
  text = values.get(fields.text)
  if not isinstance(text, str):
    raise ValueError(f"no string field {fields.text!r}")
  language = values.get(fields.language, default_language)
  if not isinstance(language, str) or not _is_code(language):
    raise ValueError(f"no valid language code in field {fields.language!r} "
                     "or in the file name")
  if fields.source is None:
    return Record(number, text, (None, language))
  source = values.get(fields.source)
  source_language = values.get(fields.source_language)
  if not isinstance(source, str):
    raise ValueError(f"no string field {fields.source!r}")
  if not isinstance(source_language, str) or not _is_code(source_language):
    raise ValueError(f"no valid language code in field "
                     f"{fields.source_language!r}")
  return Record(number, text, (source_language, language), source)


def read_records(path: str, file_format: str, fields: Fields,
                 warn: bool = False) -> Iterator[Record | int]:
  """Yields the valid records of a file, and the number of each invalid one.

  Args:
    path: the file.
    file_format: one of `FORMATS`.
    fields: the record's field names.
    warn: log a warning naming the file and number of each skipped record
      (the first `MAX_WARNINGS_PER_FILE`).
  """
  default_language = file_language(path)
  unit = "record" if file_format == "tfrecord" else "line"
  warnings = 0
  for number, raw in _raw_records(path, file_format):
    try:
      record = parse_record(raw, number, file_format, fields,
                            default_language)
    except ValueError as e:
      if warn and warnings < MAX_WARNINGS_PER_FILE:
        logging.warning("Skipping %s %d of %s: %s", unit, number, path, e)
      warnings += 1
      yield number
      continue
    if record is not None:
      yield record


def scan_files(files: Sequence[str], file_format: str,
               fields: Fields) -> list[FileScan]:
  """Counts the examples of each language pair in each file.

  Logs a warning for each skipped record (see `read_records`), a total per
  file, and a warning for each file without examples.
  """
  scans = []
  for path in files:
    scan = FileScan(path)
    for item in read_records(path, file_format, fields, warn=True):
      if isinstance(item, Record):
        scan.examples[item.pair] += 1
      else:
        scan.skipped += 1
    if scan.skipped:
      logging.warning("Skipped %d invalid records of %s", scan.skipped, path)
    if not scan.examples:
      logging.warning("%s has no examples", path)
    scans.append(scan)
  return scans


# --- the data source --------------------------------------------------------


class FileSource(seqio.DataSource):
  """Streams the examples of one language pair from files.

  Each example is `{"inputs": source text or "", "targets": text}` (string
  scalars). Files are read in the given order, so the examples of a split
  are always in the same order; the Task shuffles them.
  """

  def __init__(self, split_files: Mapping[str, Sequence[str]],
               split_counts: Mapping[str, int], file_format: str,
               fields: Fields, pair: Pair):
    """Initializes the source.

    Args:
      split_files: the files holding examples of `pair`, by split.
      split_counts: examples of `pair` by split, from `scan_files`.
      file_format: one of `FORMATS`.
      fields: the record's field names.
      pair: (source language or None, language) of the examples.
    """
    super().__init__(splits=tuple(split_files), caching_permitted=True,
                     num_input_examples=dict(split_counts))
    self._split_files = {s: list(f) for s, f in split_files.items()}
    self._format = file_format
    self._fields = fields
    self._pair = pair

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return self._split_files[split]

  def shard_records(self, split: str,
                    shard_info: seqio.ShardInfo | None = None
                    ) -> Iterator[Record]:
    """Yields the records of `pair` in `split` that belong to a shard."""
    files = self._split_files[split]
    index, count = ((shard_info.index, shard_info.num_shards)
                    if shard_info else (0, 1))
    by_file = len(files) >= count
    if by_file:
      files = files[index::count]
    position = 0
    for path in files:
      for record in read_records(path, self._format, self._fields):
        if not isinstance(record, Record) or record.pair != self._pair:
          continue
        if by_file or position % count == index:
          yield record
        position += 1

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None,
                  *, sequence_length=None, use_cached=False,
                  num_epochs=1) -> tf.data.Dataset:
    # Examples are read in file order, which is what makes shards disjoint
    # and a resumed run exact; the Task shuffles the examples.
    del shuffle, seed, sequence_length, use_cached, num_epochs
    if split not in self._split_files:
      raise ConfigError(f"unknown split {split!r}: this source has "
                        f"{', '.join(self._split_files)}")

    def generate():
      # Records travel in chunks, because tf.data's cost per generator
      # element (about 0.5 ms) would otherwise cap reading at about 2,000
      # examples per second.
      inputs, targets = [], []
      for record in self.shard_records(split, shard_info):
        inputs.append(record.source)
        targets.append(record.text)
        if len(targets) == _CHUNK:
          yield {"inputs": inputs, "targets": targets}
          inputs, targets = [], []
      if targets:
        yield {"inputs": inputs, "targets": targets}

    spec = tf.TensorSpec(shape=[None], dtype=tf.string)
    return tf.data.Dataset.from_generator(
        generate, output_signature={"inputs": spec, "targets": spec}
    ).unbatch()


def pair_sources(split_paths: Mapping[str, str], file_format: str,
                 fields: Fields) -> dict[Pair, FileSource]:
  """Scans the files of each split and builds one source per language pair.

  A pair gets a source if any split has examples of it. Each split of the
  source lists only the files with examples of the pair.

  Args:
    split_paths: a folder, glob pattern or file for each split.
    file_format: one of `FORMATS`.
    fields: the record's field names.

  Returns:
    The sources by (source language or None, language).

  Raises:
    ConfigError: an unknown format.
    DataError: a split has no files, or no file has any example.
  """
  scans = {split: scan_files(list_files(path, file_format), file_format,
                             fields)
           for split, path in split_paths.items()}
  pairs = sorted({pair for split_scans in scans.values()
                  for scan in split_scans for pair in scan.examples},
                 key=lambda p: (p[0] or "", p[1]))
  if not pairs:
    raise DataError(
        f"no valid examples in the {file_format} files at "
        f"{', '.join(split_paths.values())}; check the warnings above for "
        "skipped records and name each text file <language code>.txt")
  sources = {}
  for pair in pairs:
    split_files = {
        split: [s.path for s in split_scans if s.examples[pair]]
        for split, split_scans in scans.items()
    }
    counts = {split: sum(s.examples[pair] for s in split_scans)
              for split, split_scans in scans.items()}
    sources[pair] = FileSource(split_files, counts, file_format, fields, pair)
  return sources
