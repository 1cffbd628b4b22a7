"""The embedded demo corpus: conversations and an English↔X name lexicon.

Everything here comes from installed packages, so the demo needs no network:

* Conversations: the YAML files of the `chatterbot-corpus` package (BSD
  licence), one folder per language. Each conversation becomes one example in
  the chat format of `sutra_jax.data.chat`. Turns are stripped of surrounding
  whitespace. An entry that is not a list of at least two non-empty strings
  is skipped and counted in the debug log. The package has a few such
  entries, where a YAML line break turned a conversation into one string.
  Exact duplicate conversations within a language are kept once.
* Lexicon: translated names of countries (ISO 3166-1), languages (ISO 639-3
  entries that have a two-letter code, which keeps the everyday names) and
  currencies (ISO 4217). The English name is pycountry's. The translation
  comes from pycountry's gettext catalog for the language and standard. Where
  pycountry has no such catalog, it comes from the Babel (CLDR) display
  names. With pycountry 26.2.16 and Babel 2.19.0, CLDR supplies the Telugu,
  Urdu and Yoruba language names and the Persian, Hebrew, Marathi, Odia,
  Telugu, Urdu and Yoruba currency names. A pair is kept only when the
  translation differs from the English name and, for CLDR names, from CLDR's
  own English name. Chinese maps to pycountry `zh_CN` and CLDR `zh_Hans`, and
  Traditional Chinese to `zh_TW` and `zh_Hant`. Hinglish (`hi-Latn`) has no
  lexicon because neither package has Hindi names in Latin script: CLDR's
  `hi_Latn` names inherit from `en_IN`, so nearly all of them are English
  spellings.

Held-out split: an example is in the `validation` split when the first eight
bytes of the SHA-256 of its key, read as a fraction of 2**64, are below
`VALIDATION_FRACTION` (10%). The key of a conversation is its turns joined by
U+001F, and the key of a lexicon pair is its English name, so one country is
held out in every language at once. The membership of an example depends only
on its own key, so adding files or languages never moves an example between
splits. The one exception is the minimum: a language whose hash rule holds
out fewer than `MIN_VALIDATION_EXAMPLES` examples also holds out its
lowest-hash training examples up to that minimum, and adding an example to
such a small language can change that top-up.
"""

import functools
import gettext
import hashlib
import importlib.resources
import os
import pathlib
from typing import Callable, Iterable, Sequence, TypeVar

from absl import logging
import babel
import pycountry
import yaml

from sutra_jax import languages
from sutra_jax.data import chat
from sutra_jax.errors import ConfigError
from sutra_jax.errors import DataError

SPLITS = ("train", "validation")
VALIDATION_FRACTION = 0.1
MIN_VALIDATION_EXAMPLES = 2

# chatterbot-corpus data folder of each language in `languages.DEMO_LANGUAGES`.
CONVERSATION_FOLDERS = {
    "bn": "bengali", "de": "german", "en": "english", "es": "spanish",
    "fa": "persian", "fr": "french", "he": "hebrew", "hi": "hindi",
    "hi-Latn": "hinglish", "id": "indonesian", "it": "italian",
    "ja": "japanese", "ko": "korean", "mr": "marathi", "nl": "dutch",
    "or": "oriya", "pt": "portuguese", "ru": "russian", "sv": "swedish",
    "ta": "tamil", "te": "telugu", "th": "thai", "tr": "turkish",
    "uk": "ukrainian", "ur": "urdu", "yo": "yoruba", "zh": "chinese",
    "zh-Hant": "traditionalchinese",
}

# Locale names where a language code does not name the locale directly.
_PYCOUNTRY_LOCALES = {"zh": "zh_CN", "zh-Hant": "zh_TW"}
_CLDR_LOCALES = {"zh": "zh_Hans", "zh-Hant": "zh_Hant"}
_NO_LEXICON = ("en", "hi-Latn")

_KEY_SEPARATOR = "\x1f"
_Example = TypeVar("_Example")


def conversation_dir() -> pathlib.Path:
  """Returns the chatterbot-corpus folder with one folder per language."""
  return pathlib.Path(
      str(importlib.resources.files("chatterbot_corpus") / "data"))


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ConfigError(f"unknown split {split!r}: the demo corpus has "
                      f"{', '.join(SPLITS)}")


def _check_language(code: str, known: Sequence[str], data_name: str) -> None:
  if code not in known:
    raise ConfigError(f"no demo {data_name} for language code {code!r}: demo "
                      f"{data_name} exist for {', '.join(known)}")


# --- held-out split ---------------------------------------------------------


def _hash_fraction(key: str) -> float:
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2**64


def split_examples(examples: Sequence[_Example],
                   key_fn: Callable[[_Example], str],
                   split: str) -> list[_Example]:
  """Selects one split of `examples` by the stable hash of `key_fn(example)`.

  See the module docstring for the rule. Examples keep their input order.

  Args:
    examples: all examples of one language.
    key_fn: maps an example to the string whose hash places it.
    split: `train` or `validation`.

  Returns:
    The examples of `split`.
  """
  _check_split(split)
  fractions = [_hash_fraction(key_fn(e)) for e in examples]
  held_out = {i for i, f in enumerate(fractions) if f < VALIDATION_FRACTION}
  minimum = min(MIN_VALIDATION_EXAMPLES, len(examples) - 1)
  if len(held_out) < minimum:
    by_hash = sorted(set(range(len(examples))) - held_out,
                     key=lambda i: fractions[i])
    held_out.update(by_hash[:minimum - len(held_out)])
  want_held_out = split == "validation"
  return [e for i, e in enumerate(examples) if (i in held_out) == want_held_out]


# --- conversations ----------------------------------------------------------


def _as_turns(entry) -> tuple[str, ...] | None:
  """Returns the stripped turns of a YAML entry, or None if it is malformed."""
  if not isinstance(entry, list) or len(entry) < 2:
    return None
  if not all(isinstance(turn, str) for turn in entry):
    return None
  turns = tuple(turn.strip() for turn in entry)
  if not all(turns) or any(m in t for t in turns for m in chat.MARKERS):
    return None
  return turns


def read_conversation_file(path: str | os.PathLike) -> list[tuple[str, ...]]:
  """Reads the conversations of one chatterbot-corpus YAML file.

  Args:
    path: a YAML file with a top-level `conversations` list.

  Returns:
    The turns of each well-formed conversation, in file order. Malformed
    entries are skipped and counted in the debug log.

  Raises:
    DataError: the file cannot be read, is not valid YAML, or has no
      `conversations` list.
  """
  try:
    with open(path, encoding="utf-8") as f:
      document = yaml.safe_load(f)
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"cannot read conversation file {str(path)!r}: {e}; "
                    "reinstall chatterbot-corpus") from None
  except yaml.YAMLError as e:
    first_line = str(e).strip().splitlines()[0]
    raise DataError(f"malformed YAML in conversation file {str(path)!r}: "
                    f"{first_line}; fix or remove the file") from None
  entries = document.get("conversations") if isinstance(document,
                                                         dict) else None
  if not isinstance(entries, list):
    raise DataError(f"conversation file {str(path)!r} has no 'conversations' "
                    "list at the top level; fix or remove the file")
  conversations = [_as_turns(entry) for entry in entries]
  skipped = sum(turns is None for turns in conversations)
  if skipped:
    logging.debug("Skipped %d malformed conversations in %s", skipped, path)
  return [turns for turns in conversations if turns is not None]


@functools.lru_cache(maxsize=None)
def _all_conversations(code: str) -> tuple[tuple[str, ...], ...]:
  folder = conversation_dir() / CONVERSATION_FOLDERS[code]
  files = sorted(folder.glob("*.yml"))
  if not files:
    raise DataError(f"no conversation files found in {str(folder)!r}; "
                    "reinstall chatterbot-corpus")
  found = []
  for path in files:
    found.extend(read_conversation_file(path))
  return tuple(dict.fromkeys(found))


def conversation_turns(code: str, split: str) -> list[tuple[str, ...]]:
  """Returns the turns of each demo conversation of one language and split.

  Raises:
    ConfigError: `code` has no demo conversations, or `split` is unknown.
  """
  _check_language(code, languages.DEMO_LANGUAGES, "conversations")
  return split_examples(_all_conversations(code), _KEY_SEPARATOR.join, split)


def conversations(code: str, split: str) -> list[str]:
  """Returns the demo conversations of one language in the chat format.

  Raises:
    ConfigError: `code` has no demo conversations, or `split` is unknown.
  """
  return [chat.format_conversation(t) for t in conversation_turns(code, split)]


# --- lexicon ----------------------------------------------------------------


def _catalog_entries():
  """Yields (gettext domain, CLDR name table, code attribute, records)."""
  yield "iso3166-1", "territories", "alpha_2", list(pycountry.countries)
  yield "iso639-3", "languages", "alpha_2", [
      lang for lang in pycountry.languages if hasattr(lang, "alpha_2")
  ]
  yield "iso4217", "currencies", "alpha_3", list(pycountry.currencies)


def _pycountry_catalog(code: str,
                       domain: str) -> gettext.NullTranslations | None:
  locale = _PYCOUNTRY_LOCALES.get(code, code)
  path = os.path.join(pycountry.LOCALES_DIR, locale, "LC_MESSAGES",
                      domain + ".mo")
  if not os.path.isfile(path):
    return None
  return gettext.translation(domain, pycountry.LOCALES_DIR, languages=[locale])


def _cldr_translator(code: str, table: str, code_attribute: str):
  """Returns a function from a pycountry record to its CLDR name, or None.

  A name that equals CLDR's English name is inherited, not translated, so the
  function returns None for it.
  """
  names = getattr(babel.Locale.parse(_CLDR_LOCALES.get(code, code)), table)
  english_names = getattr(babel.Locale.parse("en"), table)

  def translate(record) -> str | None:
    key = getattr(record, code_attribute)
    name = names.get(key)
    return None if name == english_names.get(key) else name

  return translate


@functools.lru_cache(maxsize=None)
def _all_lexicon_pairs(code: str) -> tuple[tuple[str, str], ...]:
  pairs = []
  for domain, table, code_attribute, records in _catalog_entries():
    catalog = _pycountry_catalog(code, domain)
    if catalog is not None:
      translate = lambda record, c=catalog: c.gettext(record.name)
    else:
      translate = _cldr_translator(code, table, code_attribute)
    for record in records:
      translation = translate(record)
      if translation and translation != record.name:
        pairs.append((record.name, translation))
  if not pairs:
    raise DataError(f"no translated names for language {code!r} in pycountry "
                    "or Babel; reinstall them")
  return tuple(dict.fromkeys(pairs))


def lexicon_languages() -> tuple[str, ...]:
  """Returns the demo languages that have an English↔X lexicon."""
  return tuple(c for c in languages.DEMO_LANGUAGES if c not in _NO_LEXICON)


def lexicon(code: str, split: str) -> list[tuple[str, str]]:
  """Returns (English name, translated name) pairs for one language.

  Raises:
    ConfigError: `code` has no lexicon (see `lexicon_languages`), or `split`
      is unknown.
  """
  _check_language(code, lexicon_languages(), "lexicon")
  return split_examples(_all_lexicon_pairs(code), lambda pair: pair[0], split)


# --- tokenizer training text ------------------------------------------------


def _unique(texts: Iterable[str]) -> list[str]:
  return list(dict.fromkeys(texts))


def demo_texts_by_language(split: str = "train") -> dict[str, list[str]]:
  """Collects the plain text of each demo language, for tokenizer training.

  The text of a language is its conversation turns (without chat markers)
  and the translated names of its lexicon. English also gets the English
  names of every lexicon.

  Args:
    split: `train` or `validation`.

  Returns:
    Texts by language code, in `languages.DEMO_LANGUAGES` order.
  """
  _check_split(split)
  texts = {}
  english_names = []
  for code in languages.DEMO_LANGUAGES:
    turns = [t for conv in conversation_turns(code, split) for t in conv]
    names = []
    if code in lexicon_languages():
      pairs = lexicon(code, split)
      names = [translation for _, translation in pairs]
      english_names.extend(english for english, _ in pairs)
    texts[code] = _unique(turns + names)
  texts["en"] = _unique(texts["en"] + english_names)
  return texts
