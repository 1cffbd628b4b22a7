"""Retrieval augmentation: find passages for a prompt and prepend them.

`Retriever` is the interface: any object with `retrieve(query, k)` that
returns `Passage`s can feed `augment_prompt`, so a web search or a vector
index can replace the BM25 retriever here.

`BM25Retriever` indexes local documents with the `bm25s` library:

* `.txt` and `.md` files, split into passages at empty lines;
* `.jsonl` files, one passage per line, the text in `text` (or `contents`)
  and an optional `title` that is used as the source name.

Tokenisation works across scripts. Text is NFKC-normalised and case-folded.
Words are runs of letters, marks and digits, so Devanagari vowel signs stay
inside their word. Runs in scripts written without spaces (Chinese,
Japanese, Thai, Lao, Khmer, Myanmar) become overlapping character bigrams.

The index is cached in `cache_dir` under a key of the file names, sizes and
modification times and the tokeniser version, and rebuilt when any of them
changes.
"""

import abc
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import unicodedata
from typing import Sequence

from absl import logging

from sutra_jax.errors import DataError

DOCUMENT_SUFFIXES = (".txt", ".md", ".jsonl")
# Bump when `tokenize` changes, so cached indexes are rebuilt.
_TOKENIZER_VERSION = 1
_PASSAGES_FILE = "passages.json"
# Unicode blocks of scripts written without spaces between words.
_UNSPACED_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3400, 0x4DBF),  # CJK Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0x20000, 0x2FA1F),  # CJK Extensions B and later
)


@dataclasses.dataclass(frozen=True)
class Passage:
  """A retrieved piece of text.

  Attributes:
    text: the passage.
    source: where it comes from: a file name, with the JSONL title or the
      paragraph number.
    score: the retriever's relevance score; higher is more relevant.
  """

  text: str
  source: str
  score: float = 0.0


class Retriever(abc.ABC):
  """Finds passages relevant to a query."""

  @abc.abstractmethod
  def retrieve(self, query: str, k: int) -> list[Passage]:
    """Returns up to `k` passages, most relevant first."""


def _unspaced(character: str) -> bool:
  code = ord(character)
  return any(low <= code <= high for low, high in _UNSPACED_RANGES)


def _word_tokens(word: str) -> list[str]:
  """Splits a word into spaced runs (kept whole) and bigrams of unspaced runs."""
  tokens, run, run_unspaced = [], "", False
  for character in word + " ":
    unspaced = _unspaced(character) if character != " " else None
    if run and (character == " " or unspaced != run_unspaced):
      if run_unspaced and len(run) > 1:
        tokens.extend(run[i:i + 2] for i in range(len(run) - 1))
      else:
        tokens.append(run)
      run = ""
    if character != " ":
      run += character
      run_unspaced = unspaced
  return tokens


def tokenize(text: str) -> list[str]:
  """Returns the index terms of `text` (see the module docstring)."""
  text = unicodedata.normalize("NFKC", text).casefold()
  tokens, word = [], ""
  for character in text + " ":
    if unicodedata.category(character)[0] in "LMN":
      word += character
    elif word:
      tokens.extend(_word_tokens(word))
      word = ""
  return tokens


def _text_passages(path: pathlib.Path) -> list[Passage]:
  text = path.read_text(encoding="utf-8")
  paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n")]
  paragraphs = [p for p in paragraphs if p]
  if len(paragraphs) == 1:
    return [Passage(paragraphs[0], path.name)]
  return [Passage(p, f"{path.name} #{i + 1}")
          for i, p in enumerate(paragraphs)]


def _jsonl_passages(path: pathlib.Path) -> list[Passage]:
  passages = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path} line {number}: invalid JSON ({e.msg})"
                        ) from None
      text = record.get("text", record.get("contents")) if isinstance(
          record, dict) else None
      if not isinstance(text, str):
        raise DataError(f"{path} line {number}: expected an object with a "
                        "'text' string")
      title = record.get("title") or f"line {number}"
      passages.append(Passage(text.strip(), f"{path.name}: {title}"))
  return passages


def _document_files(directory: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in directory.rglob("*")
                if p.is_file() and p.suffix.lower() in DOCUMENT_SUFFIXES
                and not any(part.startswith(".") for part in
                            p.relative_to(directory).parts))


def read_passages(directory: str) -> list[Passage]:
  """Reads every passage of the documents under `directory`.

  Raises:
    DataError: the directory is missing, has no documents, or a JSONL line
      is malformed.
  """
  root = pathlib.Path(directory)
  if not root.is_dir():
    raise DataError(f"retrieval directory not found: {directory!r}; pass a "
                    "folder of .txt, .md or .jsonl documents")
  passages = []
  for path in _document_files(root):
    try:
      if path.suffix.lower() == ".jsonl":
        passages.extend(_jsonl_passages(path))
      else:
        passages.extend(_text_passages(path))
    except UnicodeDecodeError:
      raise DataError(f"{path} is not UTF-8 text; convert it or remove it "
                      "from the retrieval directory") from None
  passages = [p for p in passages if tokenize(p.text)]
  if not passages:
    raise DataError(f"no documents with text in retrieval directory "
                    f"{directory!r}; add .txt, .md or .jsonl files")
  return passages


def _index_key(directory: pathlib.Path) -> str:
  digest = hashlib.sha256(f"tokenizer {_TOKENIZER_VERSION}\n".encode())
  for path in _document_files(directory):
    stat = path.stat()
    digest.update(f"{path.relative_to(directory)}\t{stat.st_size}\t"
                  f"{stat.st_mtime_ns}\n".encode("utf-8"))
  return digest.hexdigest()[:16]


def default_cache_dir() -> str:
  """Returns `$XDG_CACHE_HOME/sutra_jax/bm25` (default `~/.cache/...`)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "sutra_jax", "bm25")


class BM25Retriever(Retriever):
  """BM25 over the documents of a local folder, with a cached index.

  Attributes:
    passages: the indexed passages, in index order.
    index_dir: the folder of the cached index.
    loaded_from_cache: whether the index was read from the cache.
  """

  def __init__(self, directory: str, cache_dir: str | None = None):
    """Loads the cached index of `directory`, or builds and caches it.

    Raises:
      DataError: a missing or empty directory (see `read_passages`).
    """
    import bm25s  # pylint: disable=g-import-not-at-top
    root = pathlib.Path(directory)
    if not root.is_dir():
      raise DataError(f"retrieval directory not found: {directory!r}; pass "
                      "a folder of .txt, .md or .jsonl documents")
    self.index_dir = os.path.join(cache_dir or default_cache_dir(),
                                  _index_key(root))
    self.loaded_from_cache = os.path.isfile(
        os.path.join(self.index_dir, _PASSAGES_FILE))
    if self.loaded_from_cache:
      self._bm25 = bm25s.BM25.load(self.index_dir, show_progress=False)
      with open(os.path.join(self.index_dir, _PASSAGES_FILE),
                encoding="utf-8") as f:
        self.passages = [Passage(**p) for p in json.load(f)]
      logging.info("Loaded the BM25 index of %s from %s", directory,
                   self.index_dir)
      return
    self.passages = read_passages(directory)
    self._bm25 = bm25s.BM25()
    self._bm25.index([tokenize(p.text) for p in self.passages],
                     show_progress=False)
    self._save()
    logging.info("Indexed %d passages of %s into %s", len(self.passages),
                 directory, self.index_dir)

  def _save(self) -> None:
    """Writes the index to a temporary folder, then moves it into place."""
    parent = os.path.dirname(self.index_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".staging-")
    try:
      self._bm25.save(staging, show_progress=False)
      with open(os.path.join(staging, _PASSAGES_FILE), "w",
                encoding="utf-8") as f:
        json.dump([dataclasses.asdict(p) for p in self.passages], f,
                  ensure_ascii=False)
      os.replace(staging, self.index_dir)
    except OSError:
      # Another process cached the same index first; keep theirs.
      shutil.rmtree(staging, ignore_errors=True)
      if not os.path.isdir(self.index_dir):
        raise

  def retrieve(self, query: str, k: int) -> list[Passage]:
    """Returns up to `k` passages with a positive BM25 score."""
    terms = tokenize(query)
    if not terms or k <= 0:
      return []
    k = min(k, len(self.passages))
    documents, scores = self._bm25.retrieve([terms], k=k, show_progress=False)
    return [dataclasses.replace(self.passages[int(i)], score=float(s))
            for i, s in zip(documents[0], scores[0]) if s > 0]


def augment_prompt(prompt: str, passages: Sequence[Passage]) -> str:
  """Prepends numbered passages with their sources to `prompt`.

  The result reads:

    [1] source: passage text
    [2] ...

    prompt
  """
  if not passages:
    return prompt
  lines = [f"[{i}] {p.source}: {' '.join(p.text.split())}"
           for i, p in enumerate(passages, start=1)]
  return "\n".join(lines) + "\n\n" + prompt
