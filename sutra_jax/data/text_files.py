"""seqio Tasks over a folder of plain-text files, one file per language.

The folder contains `<code>.txt` files (for example `hi.txt`, `zh-Hant.txt`),
UTF-8, one example per line; empty lines are skipped. Each file becomes a
monolingual task named `text_<code>.<folder key>.vocab_<key>` whose only split
is `split`, so held-out text can be evaluated with the same features as
training data.
"""

import hashlib
import os
import pathlib
from typing import Sequence

from absl import logging
import seqio
import tensorflow as tf

from sutra_jax import languages
from sutra_jax.data import mixtures
from sutra_jax.data import tasks
from sutra_jax.errors import DataError


def read_text_dir(data_dir: str,
                  table: languages.LanguageTable) -> dict[str, list[str]]:
  """Reads `<code>.txt` files into `{code: lines}`.

  Raises:
    DataError: the folder is missing or has no `.txt` file, a file name is
      not a language of `table`, or every file is empty.
  """
  folder = pathlib.Path(data_dir)
  if not folder.is_dir():
    raise DataError(f"data directory not found: {data_dir!r}; pass a folder "
                    "of <language code>.txt files")
  files = sorted(folder.glob("*.txt"))
  if not files:
    raise DataError(f"no .txt files in {data_dir!r}; add one "
                    "<language code>.txt file per language, such as hi.txt")
  texts = {}
  for path in files:
    code = path.stem
    languages.check_codes([code], table, f"the file name {path.name!r}")
    texts[code] = _read_lines(path)
  if not any(texts.values()):
    raise DataError(f"every .txt file in {data_dir!r} is empty")
  return texts


def _read_lines(path: pathlib.Path) -> list[str]:
  """Returns the non-empty lines of a UTF-8 file, skipping invalid ones."""
  lines, invalid = [], 0
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8").strip()
      except UnicodeDecodeError:
        invalid += 1
        logging.warning("Skipping line %d of %s: invalid UTF-8", number, path)
        continue
      if line:
        lines.append(line)
  if invalid:
    logging.warning("Skipped %d invalid UTF-8 lines of %s", invalid, path)
  return lines


def register_text_dir_tasks(data_dir: str, vocabulary: seqio.Vocabulary,
                            table: languages.LanguageTable,
                            split: str = "validation") -> list[str]:
  """Registers one task per non-empty file of `data_dir`; returns the names."""
  texts = read_text_dir(data_dir, table)
  folder_key = hashlib.sha256(
      os.path.abspath(data_dir).encode("utf-8")).hexdigest()[:8]
  names = []
  for code, lines in texts.items():
    if not lines:
      logging.warning("Skipping %s.txt in %s: it has no text", code, data_dir)
      continue
    name = (f"text_{code.replace('-', '_')}.{folder_key}.vocab_"
            f"{tasks.vocabulary_key(vocabulary)}")
    if name in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=_lines_source(lines, split),
        output_features=tasks.output_features(vocabulary,
                                              inputs_add_eos=False),
        preprocessors=[
            seqio.preprocessors.tokenize,
            seqio.preprocessors.append_eos_after_trim,
            lambda ds, code=code: tasks.add_language_features(ds, code, code),
        ],
        shuffle_buffer_size=max(len(lines), 1))
    names.append(name)
  return names


def _lines_source(lines: Sequence[str], split: str) -> seqio.DataSource:
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed  # One split, read in order.
    return tf.data.Dataset.from_tensor_slices({
        "inputs": tf.constant([""] * len(lines), dtype=tf.string),
        "targets": tf.constant(list(lines), dtype=tf.string),
    })

  return seqio.FunctionDataSource(dataset_fn, splits=[split],
                                  num_input_examples={split: len(lines)})


def register_text_dir_mixture(data_dir: str, vocabulary: seqio.Vocabulary,
                              table: languages.LanguageTable,
                              split: str = "validation") -> str:
  """Registers the tasks of `data_dir` as one mixture; returns its name.

  Every task gets the same rate; without `repeat` a mixture reads every task
  to its end, so evaluation covers all lines.
  """
  names = register_text_dir_tasks(data_dir, vocabulary, table, split)
  mixture = names[0].replace(names[0].split(".")[0], "text_dir", 1)
  if mixture in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(mixture)
  seqio.MixtureRegistry.add(mixture, [(n, 1.0) for n in names],
                            sample_fn=mixtures.skip_exhausted_sampler())
  return mixture
