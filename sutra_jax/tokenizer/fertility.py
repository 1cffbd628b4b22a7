"""Tokenizer fertility on parallel text, for our model and reference ones.

For each language the report gives tokens per word, tokens per character
(Unicode code points, spaces included) and the ratio of its token count to
English on the same lines. A language that needs more tokens for the same
content costs more compute and context, so a ratio near 1 is the goal.

Parallel text is a folder of one file per language, named as NTREX-128 names
them: `newstest2019-src.eng.txt` (the English source) and
`newstest2019-ref.<code>.txt`, optionally with more dot-separated parts
before `.txt` (`newstest2019-ref.hin.first1005.txt`). Line i of every file is
the same sentence. A folder named `<code>.txt` per language also works.

Reference tokenizers are read offline: SentencePiece `.model` files, and
tiktoken `.tiktoken` rank files (the pre-tokenization pattern is tiktoken's
own for `o200k`, `cl100k`, or otherwise GPT-2's `r50k`, chosen by file
name).
"""

import base64
import math
import os
import pathlib
import re
from typing import Mapping, Sequence
from unittest import mock

import sentencepiece as spm

from sutra_jax.errors import ConfigError
from sutra_jax.errors import DataError

ENGLISH = "eng"
# NTREX names: newstest2019-src.eng.txt, newstest2019-ref.zho-CN.first1005.txt.
_NTREX_NAME = re.compile(
    r"^[A-Za-z]+\d*-(?:src|ref)\.(?P<code>[A-Za-z]{2,3}(?:-[A-Za-z0-9]+)?)"
    r"(?:\.[^.]+)*\.txt$")
# Languages written without spaces between words: their words are counted
# as non-space characters. ISO 639-1 and 639-3 codes.
_UNSEGMENTED = frozenset({"ja", "jpn", "zh", "zho", "th", "tha", "lo", "lao",
                          "km", "khm", "my", "mya"})
METRICS = ("tokens_per_word", "tokens_per_character", "ratio_to_english")


def language_of_file(name: str) -> str | None:
  """Returns the language code of an NTREX or `<code>.txt` file name."""
  match = _NTREX_NAME.match(name)
  if match:
    return match.group("code")
  if name.endswith(".txt") and "." not in name[:-4]:
    return name[:-4]
  return None


def is_english(code: str) -> bool:
  """True for `eng` and `en`, the English source; not for `eng-IN`."""
  return code in (ENGLISH, "en")


def count_words(text: str, code: str) -> int:
  """Counts words, or non-space characters for unsegmented scripts."""
  if code.split("-")[0].lower() in _UNSEGMENTED:
    return sum(not ch.isspace() for ch in text)
  return len(text.split())


def read_parallel_dir(parallel_dir: str) -> dict[str, list[str]]:
  """Reads the parallel files of a folder (or of its `text/` subfolder).

  Returns:
    Lines by language code, all of the same length, English first.

  Raises:
    DataError: the folder is missing, has no English file, a file is not
      UTF-8, or the files have different numbers of lines.
  """
  root = pathlib.Path(parallel_dir)
  if not root.is_dir():
    raise DataError(f"parallel data folder not found: {parallel_dir!r}; "
                    "pass a folder of newstest2019-ref.<code>.txt files")
  if not any(language_of_file(p.name) for p in root.glob("*.txt")):
    root = root / "text"
  files = {}
  for path in sorted(root.glob("*.txt")):
    code = language_of_file(path.name)
    if code:
      files[code] = path
  english = [c for c in files if is_english(c)]
  if not english:
    raise DataError(f"no English file in {parallel_dir!r}: add "
                    "newstest2019-src.eng.txt (or en.txt), the lines every "
                    "ratio is measured against")
  texts = {}
  for code in english + sorted(c for c in files if c not in english):
    try:
      texts[code] = files[code].read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
      raise DataError(f"{str(files[code])!r} is not valid UTF-8 ({e.reason} "
                      f"at byte {e.start}); convert it to UTF-8") from None
  lengths = {code: len(lines) for code, lines in texts.items()}
  if len(set(lengths.values())) > 1:
    raise DataError(f"the files of {parallel_dir!r} are not parallel: line "
                    f"counts {lengths}; give every language the same lines")
  return texts


# --- tokenizers -------------------------------------------------------------


class Tokenizer:
  """Counts tokens of texts, without BOS, EOS or other special tokens."""

  def __init__(self, name: str, encode_batch):
    self.name = name
    self._encode_batch = encode_batch

  def count(self, texts: Sequence[str]) -> int:
    return sum(len(ids) for ids in self._encode_batch(list(texts)))


def _load_sentencepiece(path: str) -> Tokenizer:
  try:
    processor = spm.SentencePieceProcessor(model_file=path)
  except (OSError, RuntimeError) as e:
    raise DataError(f"cannot load SentencePiece model {path!r}: {e}; check "
                    "the path") from None
  return Tokenizer(_name(path), processor.encode)


def read_tiktoken_ranks(path: str) -> dict[bytes, int]:
  """Reads a `.tiktoken` file: one `<base64 token> <rank>` per line."""
  ranks = {}
  with open(path, "rb") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
      except ValueError:
        raise DataError(f"line {number} of {path!r} is not '<base64 token> "
                        "<rank>'; pass a tiktoken BPE file") from None
  return ranks


def _tiktoken_pattern(path: str) -> str:
  """Returns tiktoken's pre-tokenization regex for the file's encoding."""
  # pylint: disable=g-import-not-at-top
  from tiktoken_ext import openai_public
  # pylint: enable=g-import-not-at-top
  name = os.path.basename(path)
  constructor = (openai_public.o200k_base if "o200k" in name else
                 openai_public.cl100k_base if "cl100k" in name else
                 openai_public.r50k_base)
  # The constructors download their rank file; only the pattern is needed,
  # so the download is replaced by an empty table.
  with mock.patch.object(openai_public, "load_tiktoken_bpe",
                         lambda *args, **kwargs: {}):
    return constructor()["pat_str"]


def _load_tiktoken(path: str) -> Tokenizer:
  import tiktoken  # pylint: disable=g-import-not-at-top
  encoding = tiktoken.Encoding(
      name=_name(path), pat_str=_tiktoken_pattern(path),
      mergeable_ranks=read_tiktoken_ranks(path), special_tokens={})
  return Tokenizer(_name(path), encoding.encode_ordinary_batch)


def _name(path: str) -> str:
  name = os.path.basename(path)
  for suffix in (".model", ".tiktoken"):
    name = name.removesuffix(suffix)
  return name


def load_tokenizer(path: str) -> Tokenizer:
  """Loads a SentencePiece `.model` or tiktoken `.tiktoken` file.

  Raises:
    DataError: the file is missing or unreadable.
    ConfigError: the file name ends neither with `.model` nor `.tiktoken`.
  """
  if not os.path.isfile(path):
    raise DataError(f"tokenizer file not found: {path!r}")
  if path.endswith(".tiktoken"):
    return _load_tiktoken(path)
  if path.endswith(".model"):
    return _load_sentencepiece(path)
  raise ConfigError(f"unknown tokenizer file {path!r}: pass a SentencePiece "
                    ".model or a tiktoken .tiktoken file")


# --- the report -------------------------------------------------------------


def fertility(tokenizer: Tokenizer,
              texts: Mapping[str, Sequence[str]]) -> dict[str, dict]:
  """Measures each language's fertility and its ratio to English.

  Args:
    tokenizer: the tokenizer.
    texts: parallel lines by language code, including English (`eng` or
      `en`).

  Returns:
    `{code: {"tokens_per_word", "tokens_per_character",
    "ratio_to_english"}}`; NaN where a denominator is 0.
  """
  counts = {code: tokenizer.count(lines) for code, lines in texts.items()}
  english = next(c for c in texts if is_english(c))
  result = {}
  for code, lines in texts.items():
    words = sum(count_words(line, code) for line in lines)
    characters = sum(len(line) for line in lines)
    result[code] = {
        "tokens_per_word": _ratio(counts[code], words),
        "tokens_per_character": _ratio(counts[code], characters),
        "ratio_to_english": _ratio(counts[code], counts[english]),
    }
  return result


def _ratio(numerator: int, denominator: int) -> float:
  return numerator / denominator if denominator else math.nan


def fertility_report(model: str, references: Sequence[str],
                     parallel_dir: str) -> dict:
  """Builds the JSON report of `sutra-tokenizer fertility`.

  Returns:
    `{"languages": {code: metrics}, "references": {name: {code:
    metrics}}}` with the metrics of `fertility`.
  """
  tokenizers = [load_tokenizer(path) for path in [model, *references]]
  texts = read_parallel_dir(parallel_dir)
  names = [t.name for t in tokenizers[1:]]
  if len(set(names)) != len(names):
    raise ConfigError(f"two references have the same name in {names}; "
                      "rename one file")
  return {
      "languages": fertility(tokenizers[0], texts),
      "references": {t.name: fertility(t, texts) for t in tokenizers[1:]},
  }


def format_table(report: dict, metric: str = "ratio_to_english") -> str:
  """Formats one metric of a report as a table, a column per tokenizer."""
  columns = {"ours": report["languages"], **report["references"]}
  width = max(12, *(len(name) + 2 for name in columns))
  lines = [f"{metric}", "language".ljust(12) +
           "".join(name.rjust(width) for name in columns)]
  for code in report["languages"]:
    lines.append(code.ljust(12) + "".join(
        f"{values[code][metric]:{width}.3f}" for values in columns.values()))
  return "\n".join(lines)


def write_chart(report: dict, path: str,
                metric: str = "ratio_to_english") -> None:
  """Writes a grouped bar chart of one metric as a PNG, atomically."""
  # pylint: disable=g-import-not-at-top
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  import numpy as np
  # pylint: enable=g-import-not-at-top
  columns = {"ours": report["languages"], **report["references"]}
  codes = list(report["languages"])
  width = 0.8 / len(columns)
  figure, axes = plt.subplots(figsize=(max(8, 0.5 * len(codes)), 4.5))
  for i, (name, values) in enumerate(columns.items()):
    axes.bar(np.arange(len(codes)) + i * width,
             [values[c][metric] for c in codes], width, label=name)
  axes.set_xticks(np.arange(len(codes)) + 0.4 - width / 2, codes,
                  rotation=90)
  axes.set_ylabel(metric.replace("_", " "))
  if metric == "ratio_to_english":
    axes.axhline(1.0, color="black", linewidth=0.8)
  axes.legend(fontsize="small")
  figure.tight_layout()
  temporary = path + ".tmp.png"
  figure.savefig(temporary, dpi=100)
  plt.close(figure)
  os.replace(temporary, path)
