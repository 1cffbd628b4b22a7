r"""sutra-tokenizer: train, extend and measure SentencePiece models.

  sutra-tokenizer train --input_dir DIR --vocab_size N --output PREFIX \
      [--model_type unigram|bpe] [--language_balance temperature|uniform] \
      [--temperature T] [--languages hi,ta] [--normalization identity] \
      [--parity_rounds 1]
  sutra-tokenizer train --demo_corpus --vocab_size 8000 --output PREFIX
  sutra-tokenizer report --model PREFIX.model (--input_dir DIR | --demo_corpus)
  sutra-tokenizer merge --base BASE.model --model PREFIX.model \
      --output MERGED [--max_new_pieces N]
  sutra-tokenizer fertility --model FILE [--reference FILE ...] \
      --parallel_dir DIR [--json] [--chart FILE.png]

DIR contains one UTF-8 text file per language, `<code>.txt` or named as
NTREX-128 names them (`newstest2019-ref.hin.txt`, English
`newstest2019-src.eng.txt`), or one folder per language, `<code>/`, whose
`*.txt` files are read. `train` writes PREFIX.model and PREFIX.vocab.
`report` prints the tokens per word of each language. `merge` appends the
pieces of --model that --base lacks, keeping every base id, and writes
MERGED.model, MERGED.vocab and MERGED.id_map.json. `fertility` prints tokens
per word, tokens per character and the ratio to English of each language for
--model and each --reference (SentencePiece .model or tiktoken .tiktoken).
"""

import json
import math
import os
import pathlib
import time
from typing import Sequence

from absl import flags
from absl import logging

from sutra_jax import languages
from sutra_jax.cli import common
from sutra_jax.errors import ConfigError
from sutra_jax.errors import DataError
from sutra_jax.tokenizer import fertility
from sutra_jax.tokenizer import merge
from sutra_jax.tokenizer import train

COMMANDS = ("train", "report", "merge", "fertility")

_INPUT_DIR = flags.DEFINE_string(
    "input_dir", None,
    "Folder with one <code>.txt file or <code>/ folder of .txt files per "
    "language.")
_DEMO_CORPUS = flags.DEFINE_bool(
    "demo_corpus", False,
    "Use the embedded demo corpus (chatterbot-corpus conversations and "
    "pycountry/CLDR names) instead of --input_dir.")
_LANGUAGES = flags.DEFINE_list(
    "languages", None,
    "Language codes to use, such as hi,ta; default: every language found.")
_VOCAB_SIZE = flags.DEFINE_integer(
    "vocab_size", None, "Number of pieces, including the 256 byte pieces.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "Output prefix: writes PREFIX.model and PREFIX.vocab.")
_MODEL_TYPE = flags.DEFINE_enum("model_type", "unigram", train.MODEL_TYPES,
                                "SentencePiece model type.")
_TEMPERATURE = flags.DEFINE_float(
    "temperature", train.DEFAULT_TEMPERATURE,
    "Language sampling temperature: 1 keeps the natural mix, larger values "
    "move towards uniform.")
_CHARACTER_COVERAGE = flags.DEFINE_float(
    "character_coverage", 1.0,
    "Fraction of characters that get a piece (0.98 to 1.0); the rest are "
    "encoded as bytes.")
_SAMPLE_LINES = flags.DEFINE_integer(
    "sample_lines", None,
    "Lines to sample for training; default: as many as the input has.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the line sampling.")
_NUM_THREADS = flags.DEFINE_integer(
    "num_threads", 1,
    "SentencePiece trainer threads. The learned pieces depend on the thread "
    "count, so keep 1 for a reproducible model; use more for large corpora.")
_LANGUAGE_BALANCE = flags.DEFINE_enum(
    "language_balance", "temperature", ("temperature", "uniform"),
    "How training lines are drawn per language: temperature sampling "
    "(--temperature) or the same number of lines for every language.")
_PARITY_ROUNDS = flags.DEFINE_integer(
    "parity_rounds", 0,
    "Retrainings that reweight each language by (its tokens / English "
    "tokens)^--parity_strength on the training text; needs English text "
    "parallel to the other languages.")
_PARITY_STRENGTH = flags.DEFINE_float(
    "parity_strength", 2.0, "Exponent of the parity reweighting.")
_NORMALIZATION = flags.DEFINE_string(
    "normalization", "identity",
    "SentencePiece normalization rule; identity keeps the text unchanged, so "
    "decoding restores it exactly. nfkc or nmt_nfkc change the text.")
_MODEL = flags.DEFINE_string(
    "model", None, "SentencePiece .model file to report on, to merge into "
    "--base, or to measure with fertility.")
_BASE = flags.DEFINE_string(
    "base", None, "merge: the SentencePiece model whose ids are kept.")
_MAX_NEW_PIECES = flags.DEFINE_integer(
    "max_new_pieces", None, "merge: append at most this many pieces.")
_REFERENCE = flags.DEFINE_multi_string(
    "reference", [], "fertility: a reference tokenizer, SentencePiece .model "
    "or tiktoken .tiktoken; repeat for several.")
_PARALLEL_DIR = flags.DEFINE_string(
    "parallel_dir", None, "fertility: folder of parallel files, one per "
    "language, with the English newstest2019-src.eng.txt.")
_JSON = flags.DEFINE_bool("json", False,
                          "fertility: print JSON instead of a table.")
_CHART = flags.DEFINE_string(
    "chart", None, "fertility: also write a bar chart of the ratios to "
    "English to this PNG file.")


def _read_text_file(path: pathlib.Path) -> list[str]:
  try:
    return path.read_text(encoding="utf-8").splitlines()
  except UnicodeDecodeError as e:
    raise DataError(f"{str(path)!r} is not valid UTF-8 ({e.reason} at byte "
                    f"{e.start}); convert it to UTF-8") from None
  except OSError as e:
    raise DataError(f"cannot read {str(path)!r}: {e.strerror}") from None


def read_text_dir(input_dir: str) -> dict[str, list[str]]:
  """Reads one language per `<code>.txt` file or `<code>/` folder.

  Raises:
    ConfigError: a file or folder name is not a language code.
    DataError: the folder is missing or a file is unreadable.
  """
  root = pathlib.Path(input_dir)
  if not root.is_dir():
    raise DataError(f"data directory not found: {input_dir!r}; pass an "
                    "existing folder with one <code>.txt file per language "
                    "to --input_dir, or use --demo_corpus")
  if not any(root.glob("*.txt")) and (root / "text").is_dir():
    root = root / "text"  # The layout of the NTREX-128 subset.
  texts = {}
  for entry in sorted(root.iterdir()):
    if entry.is_dir():
      code, files = entry.name, sorted(entry.glob("*.txt"))
    elif entry.suffix == ".txt":
      code, files = fertility.language_of_file(entry.name) or entry.stem, [
          entry]
    else:
      logging.info("Ignoring %s: not a .txt file or language folder", entry)
      continue
    try:
      train.validate_language_label(code)
    except ConfigError as e:
      raise ConfigError(f"{e} (from the name of {str(entry)!r}); name each "
                        "file <code>.txt or folder <code>/") from None
    lines = texts.setdefault(code, [])
    for path in files:
      lines.extend(_read_text_file(path))
  return texts


def _check_language_flag(available: Sequence[str], source: str) -> None:
  for code in _LANGUAGES.value or ():
    if code not in available:
      raise ConfigError(f"unknown language code {code!r} in --languages: "
                        f"{source} has {', '.join(available) or 'none'}")


def _load_texts() -> dict[str, list[str]]:
  """Returns the texts that --input_dir or --demo_corpus select."""
  if _DEMO_CORPUS.value == (_INPUT_DIR.value is not None):
    raise ConfigError("pass exactly one of --input_dir DIR and --demo_corpus")
  if _DEMO_CORPUS.value:
    source = "the demo corpus"
    _check_language_flag(languages.DEMO_LANGUAGES, source)
    # Imported here, so reading a directory does not load the corpus packages.
    from sutra_jax.data import corpus  # pylint: disable=g-import-not-at-top
    texts = corpus.demo_texts_by_language("train")
  else:
    source = repr(_INPUT_DIR.value)
    texts = read_text_dir(_INPUT_DIR.value)
    _check_language_flag(list(texts), source)

  if _LANGUAGES.value:
    texts = {code: texts[code] for code in _LANGUAGES.value}
  if not any(line.strip() for lines in texts.values() for line in lines):
    raise DataError(f"no text found in {source}: add non-empty <code>.txt "
                    "files")
  return texts


def _train() -> None:
  if _VOCAB_SIZE.value is None:
    raise ConfigError("--vocab_size is required, for example --vocab_size "
                      "8000")
  if not _OUTPUT.value:
    raise ConfigError("--output is required, for example --output "
                      "runs/demo/spm")
  texts = _load_texts()
  start = time.monotonic()
  model_path = train.train_with_parity(
      texts, _OUTPUT.value, _VOCAB_SIZE.value,
      rounds=_PARITY_ROUNDS.value, strength=_PARITY_STRENGTH.value,
      model_type=_MODEL_TYPE.value,
      temperature=(math.inf if _LANGUAGE_BALANCE.value == "uniform"
                   else _TEMPERATURE.value),
      sample_lines=_SAMPLE_LINES.value,
      seed=_SEED.value,
      character_coverage=_CHARACTER_COVERAGE.value,
      normalization_rule_name=_NORMALIZATION.value,
      num_threads=_NUM_THREADS.value)
  print(f"wrote {model_path} and {os.path.splitext(model_path)[0]}.vocab "
        f"({_VOCAB_SIZE.value} pieces, {len(texts)} languages, "
        f"{time.monotonic() - start:.1f} s)")


def _report() -> None:
  if not _MODEL.value:
    raise ConfigError("--model is required, for example --model "
                      "runs/demo/spm.model")
  texts = _load_texts()
  fertility = train.tokens_per_word(_MODEL.value, texts)
  print("language\ttokens_per_word")
  for code, value in fertility.items():
    print(f"{code}\t{value:.3f}")


def _merge() -> None:
  if not _BASE.value or not _MODEL.value or not _OUTPUT.value:
    raise ConfigError("merge needs --base BASE.model, --model PREFIX.model "
                      "and --output MERGED")
  if _MAX_NEW_PIECES.value is not None and _MAX_NEW_PIECES.value < 0:
    raise ConfigError(f"invalid --max_new_pieces {_MAX_NEW_PIECES.value}: "
                      "expected 0 or more")
  id_map = merge.merge_models(_BASE.value, _MODEL.value, _OUTPUT.value,
                              _MAX_NEW_PIECES.value)
  print(f"wrote {_OUTPUT.value}.model ({id_map['base_vocab_size']} base "
        f"pieces + {id_map['new_pieces']} new = {id_map['vocab_size']}), "
        f"{_OUTPUT.value}.vocab and {_OUTPUT.value}.id_map.json")


def _fertility() -> None:
  if not _MODEL.value or not _PARALLEL_DIR.value:
    raise ConfigError("fertility needs --model FILE and --parallel_dir DIR")
  report = fertility.fertility_report(_MODEL.value, _REFERENCE.value,
                                      _PARALLEL_DIR.value)
  if _CHART.value:
    fertility.write_chart(report, _CHART.value)
  if _JSON.value:
    print(json.dumps(report, indent=2))
    return
  for metric in fertility.METRICS:
    print(fertility.format_table(report, metric))
    print()


def main(argv: Sequence[str]) -> None:
  commands = list(argv[1:])
  if len(commands) != 1 or commands[0] not in COMMANDS:
    raise ConfigError(f"expected one command, {' or '.join(COMMANDS)}; got "
                      f"{' '.join(commands) or 'none'}. Run "
                      "`sutra-tokenizer train --help` for the flags")
  {"train": _train, "report": _report, "merge": _merge,
   "fertility": _fertility}[commands[0]]()


def run() -> None:
  """Console-script entry point."""
  common.run_main(main)


if __name__ == "__main__":
  run()
