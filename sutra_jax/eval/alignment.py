"""Cross-lingual sentence retrieval through the concept core.

The concept core should map a sentence and its translation to nearby hidden
states. This module measures that on parallel text. Each sentence runs
through the model as its own segment, with its language in both language id
streams and no chat markers. Its embedding is the core's output
(`ModelOutput.core_hidden`) averaged over its real tokens and scaled to unit
L2 norm. For each language X, sentence i of English is matched to the
sentence of X with the highest cosine similarity, and the reverse. Top-1
accuracy is the fraction matched to sentence i itself.

Two folder layouts of parallel text are read, one sentence per line and line
i of every file the same sentence:

* NTREX-128 (`newstest2019-src.eng[.*].txt` for English and
  `newstest2019-ref.<code>[.*].txt` for the others, directly in the folder
  or in its `text/` subfolder). Codes are ISO 639-3 with an optional region
  or script (`hin`, `zho-TW`, `srp-Latn`).
* `<code>.txt` files, including `en.txt`.

Shapes: N sentences, B batch, L padded length, D model width.
"""

import dataclasses
import math
import os
import re
from typing import Sequence

from absl import logging
from babel.core import get_global
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pycountry

from sutra_jax import languages
from sutra_jax import progress
from sutra_jax.errors import DataError

ENGLISH = "en"
_NTREX_FILE = re.compile(
    r"^newstest\d+-(?P<side>src|ref)\.(?P<code>[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]+)?)"
    r"(?:\.[^.]+)*\.txt$")
_CODE_FILE = re.compile(r"^(?P<code>[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]+)?)\.txt$")
# Padded lengths are rounded up to a multiple of this, so a run compiles the
# embedding function for at most max_length / 16 shapes.
_LENGTH_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class ParallelFiles:
  """The files of a parallel text folder.

  Attributes:
    english: path of the English file.
    others: language code (as `normalize_code` returns it) -> path, for every
      other language.
    num_lines: lines per file, the same in every file.
  """

  english: str
  others: dict[str, str]
  num_lines: int


def normalize_code(file_code: str) -> str | None:
  """Converts a file's language code to the BCP 47 style of language tables.

  ISO 639-3 codes become ISO 639-1 where one exists (`hin` -> `hi`). A
  region selects its script by CLDR's likely subtags (`zho-TW` -> `zh-Hant`)
  and is otherwise dropped (`eng-IN` -> `en`). A script that is the
  language's likely script is dropped (`zho_Hans` -> `zh`), because a table
  code without a script means that script.

  Returns:
    The code, or None when the language is not in ISO 639.
  """
  base, _, subtag = file_code.replace("_", "-").partition("-")
  base = base.lower()
  key = "alpha_2" if len(base) == 2 else "alpha_3"
  language = pycountry.languages.get(**{key: base})
  if language is None:
    return None
  base = getattr(language, "alpha_2", None) or base
  likely = get_global("likely_subtags")
  if len(subtag) == 4 and subtag.isalpha():
    script = subtag.title()
  else:
    region = subtag.upper()
    full = likely.get(f"{base}_{region}") if region else None
    script = full.split("_")[1] if full else ""
  default = likely.get(base, "").split("_")
  if script and len(default) > 1 and default[1] == script:
    script = ""
  return f"{base}-{script}" if script else base


def _file_code(name: str, ntrex_layout: bool) -> tuple[str, str] | None:
  """Returns (side, file code) of a parallel text file name, or None."""
  if ntrex_layout:
    match = _NTREX_FILE.match(name)
    return (match.group("side"), match.group("code")) if match else None
  match = _CODE_FILE.match(name)
  if match is None:
    return None
  code = match.group("code")
  return ("src" if normalize_code(code) == ENGLISH else "ref"), code


def _count_lines(path: str) -> int:
  with open(path, encoding="utf-8") as f:
    return sum(1 for _ in f)


def find_parallel_files(directory: str) -> ParallelFiles:
  """Finds the English file and the other languages' files in `directory`.

  Files that map to English other than the English one (`eng-IN`), that
  map to a code seen before, or whose code is not in ISO 639 are skipped
  with a warning.

  Raises:
    DataError: the folder is missing, has no English file, or has files
      with different line counts.
  """
  if not os.path.isdir(directory):
    raise DataError(f"parallel directory not found: {directory!r}; pass a "
                    "folder of NTREX-128 files or of <code>.txt files")
  folders = [directory]
  if os.path.isdir(os.path.join(directory, "text")):
    folders.append(os.path.join(directory, "text"))
  english, others, skipped = None, {}, []
  for folder in folders:
    names = sorted(os.listdir(folder))
    ntrex_layout = any(_NTREX_FILE.match(n) for n in names)
    for name in names:
      found = _file_code(name, ntrex_layout)
      if found is None:
        continue
      side, file_code = found
      path = os.path.join(folder, name)
      code = normalize_code(file_code)
      if side == "src" and code == ENGLISH and english is None:
        english = path
      elif code is None or code == ENGLISH or code in others:
        skipped.append(name)
      else:
        others[code] = path
  if english is None:
    raise DataError(
        f"no English file in {directory!r}: expected "
        "newstest2019-src.eng.txt (NTREX-128) or en.txt")
  if skipped:
    logging.warning("Skipped %d files whose language is unknown, English "
                    "again or a duplicate: %s", len(skipped),
                    ", ".join(skipped))
  num_lines = _count_lines(english)
  for path in others.values():
    count = _count_lines(path)
    if count != num_lines:
      raise DataError(
          f"{path} has {count} lines but the English file {english} has "
          f"{num_lines}; parallel files must be aligned line by line")
  return ParallelFiles(english=english, others=others, num_lines=num_lines)


def keep_known_languages(files: ParallelFiles,
                         table: languages.LanguageTable) -> ParallelFiles:
  """Drops the languages that `table` does not have, with one warning."""
  unknown = sorted(code for code in files.others if code not in table)
  if unknown:
    logging.warning("Skipping %d languages that the model does not know: %s",
                    len(unknown), ", ".join(unknown))
  others = {code: path for code, path in files.others.items()
            if code in table}
  return dataclasses.replace(files, others=others)


def read_lines(path: str) -> list[str]:
  with open(path, encoding="utf-8") as f:
    return [line.rstrip("\n").strip() for line in f]


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Averages [B, L, D] hidden states over the positions where mask [B, L] is 1.

  A row without any real token gets zeros.
  """
  mask = mask.astype(hidden.dtype)[..., None]
  total = jnp.sum(hidden * mask, axis=1)
  return total / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


@nnx.jit
def _pooled_core_hidden(model, tokens, language_ids, mask):
  """Returns the [B, D] float32 mean of the core's output over real tokens."""
  segment_ids = mask.astype(jnp.int32)
  output = model(tokens, encoder_language_ids=language_ids,
                 decoder_language_ids=language_ids, segment_ids=segment_ids)
  return mean_pool(output.core_hidden.astype(jnp.float32), mask)


def embed_token_ids(model, token_ids: Sequence[Sequence[int]],
                    language_id: int, batch_size: int) -> np.ndarray:
  """Embeds tokenized sentences as unit-norm mean-pooled core states.

  Sentences are sorted by length and run `batch_size` at a time, padded to
  the longest of the batch rounded up to a multiple of 16. The last batch is
  filled with empty rows, so every batch has the same size.

  Args:
    model: a SutraModel.
    token_ids: N token id lists; empty lists get a zero embedding.
    language_id: the language id of every sentence.
    batch_size: B.

  Returns:
    [N, D] float32 embeddings in the order of `token_ids`.
  """
  order = np.argsort([len(t) for t in token_ids], kind="stable")
  embeddings = [None] * len(token_ids)
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    longest = max(1, max(len(token_ids[i]) for i in rows))
    length = -(-longest // _LENGTH_BUCKET) * _LENGTH_BUCKET
    tokens = np.zeros((batch_size, length), np.int32)
    mask = np.zeros((batch_size, length), np.int32)
    for row, index in enumerate(rows):
      tokens[row, :len(token_ids[index])] = token_ids[index]
      mask[row, :len(token_ids[index])] = 1
    ids = np.full((batch_size, length), language_id, np.int32)
    pooled = np.asarray(_pooled_core_hidden(model, tokens, ids, mask))
    for row, index in enumerate(rows):
      embeddings[index] = pooled[row]
  stacked = np.stack(embeddings).astype(np.float32)
  norms = np.linalg.norm(stacked, axis=1, keepdims=True)
  return stacked / np.maximum(norms, 1e-12)


def retrieval_accuracy(queries: np.ndarray, keys: np.ndarray) -> float:
  """Top-1 accuracy of retrieving keys[i] for queries[i] by cosine similarity.

  Args:
    queries: [N, D] embeddings.
    keys: [N, D] embeddings; row i is the correct match of queries[i].

  Returns:
    The fraction of queries whose most similar key is their own. Ties go to
    the lowest key index. NaN when N is 0.
  """
  if not len(queries):
    return math.nan
  queries = queries / np.maximum(
      np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
  keys = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
  best = np.argmax(queries @ keys.T, axis=1)
  return float(np.mean(best == np.arange(len(queries))))


def alignment(model, vocabulary, table: languages.LanguageTable,
              files: ParallelFiles, *, batch_size: int,
              max_length: int) -> dict:
  """Computes English <-> X retrieval accuracy for each language of `files`.

  Lines that are empty in English or in X are left out of that pair.

  Args:
    model: a SutraModel.
    vocabulary: the run's seqio vocabulary.
    table: the run's language table, which must contain English and every
      language of `files.others`.
    files: the parallel files (see `keep_known_languages`).
    batch_size: sentences per forward pass.
    max_length: tokens kept per sentence; longer sentences are truncated.

  Returns:
    `per_language`: `{code: {"en_to_x", "x_to_en", "count"}}`;
    `macro_average`: `{"en_to_x", "x_to_en"}`, the unweighted means over
    languages (NaN when there are none).
  """

  def embed(path: str, code: str) -> tuple[np.ndarray, np.ndarray]:
    ids = [list(vocabulary.encode(line))[:max_length]
           for line in read_lines(path)]
    nonempty = np.array([len(t) > 0 for t in ids])
    logging.info("Embedding %d %s sentences", len(ids), code)
    return embed_token_ids(model, ids, table.id(code), batch_size), nonempty

  english, english_nonempty = embed(files.english, ENGLISH)
  per_language = {}
  for code in progress.track(sorted(files.others), desc="alignment",
                             unit="language"):
    other, nonempty = embed(files.others[code], code)
    keep = english_nonempty & nonempty
    per_language[code] = {
        "en_to_x": retrieval_accuracy(english[keep], other[keep]),
        "x_to_en": retrieval_accuracy(other[keep], english[keep]),
        "count": int(keep.sum()),
    }
  macro = {
      direction: (float(np.mean([r[direction]
                                 for r in per_language.values()]))
                  if per_language else math.nan)
      for direction in ("en_to_x", "x_to_en")
  }
  return {"per_language": per_language, "macro_average": macro}
