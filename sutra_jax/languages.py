"""Language codes, language ids and language groups.

Every token carries two language ids (see `sutra_jax.data.feature_converter`):
the index of a language code in the configured `LanguageTable`. The model maps
each language id to a language *group*, the index of the encoder and decoder
block weights that the token is routed to. Related languages may share a
group, for example `{"mr": "hi"}` routes Marathi through the Hindi blocks.

Codes are BCP 47 style: an ISO 639 language code, optionally followed by a
script subtag (`zh-Hant`, `hi-Latn`).
"""

import dataclasses
from typing import Mapping, Sequence

import gin
import pycountry

from sutra_jax.errors import ConfigError

# Languages of the embedded demo corpus (the chatterbot-corpus package).
DEMO_LANGUAGES = (
    "en", "bn", "de", "es", "fa", "fr", "he", "hi", "hi-Latn", "id", "it",
    "ja", "ko", "mr", "nl", "or", "pt", "ru", "sv", "ta", "te", "th", "tr",
    "uk", "ur", "yo", "zh", "zh-Hant",
)


def validate_code(code: str) -> str:
  """Checks that `code` is an ISO 639 code with an optional ISO 15924 script.

  Args:
    code: a language code such as `hi`, `zh-Hant` or `hi-Latn`.

  Returns:
    The code, unchanged.

  Raises:
    ConfigError: the code is not a known ISO 639 language or script.
  """
  if not isinstance(code, str) or not code:
    raise ConfigError(f"invalid language code {code!r}: expected an ISO 639 "
                      "code such as 'hi' or 'zh-Hant'")
  language, _, script = code.partition("-")
  key = "alpha_2" if len(language) == 2 else "alpha_3"
  if len(language) not in (2, 3) or pycountry.languages.get(
      **{key: language.lower()}) is None:
    raise ConfigError(f"unknown language code {code!r}: use an ISO 639-1 or "
                      "639-3 code such as 'hi', 'ko' or 'yue'")
  if script and (len(script) != 4 or
                 pycountry.scripts.get(alpha_4=script.title()) is None):
    raise ConfigError(f"unknown script subtag in language code {code!r}: use "
                      "an ISO 15924 script such as 'Latn' or 'Hant'")
  return code


@dataclasses.dataclass(frozen=True)
class LanguageTable:
  """The languages of a model, with their ids and groups.

  Attributes:
    codes: language codes; a language's id is its index here.
    group_of: the group name of each language, in `codes` order. A group is
      named after one of its languages.
  """

  codes: tuple[str, ...]
  group_of: tuple[str, ...]

  def __post_init__(self):
    if len(set(self.codes)) != len(self.codes):
      raise ConfigError(f"duplicate language codes in {list(self.codes)}")
    if len(self.group_of) != len(self.codes):
      raise ConfigError("LanguageTable needs one group per language")

  @property
  def group_names(self) -> tuple[str, ...]:
    """Group names in order of first appearance; a group's index is its id."""
    return tuple(dict.fromkeys(self.group_of))

  @property
  def num_groups(self) -> int:
    return len(self.group_names)

  @property
  def group_ids(self) -> tuple[int, ...]:
    """The group id of each language id."""
    index = {name: i for i, name in enumerate(self.group_names)}
    return tuple(index[g] for g in self.group_of)

  def __len__(self) -> int:
    return len(self.codes)

  def __contains__(self, code: str) -> bool:
    return code in self.codes

  def id(self, code: str) -> int:
    """Returns the language id of `code`.

    Raises:
      ConfigError: `code` is not in this table.
    """
    try:
      return self.codes.index(code)
    except ValueError:
      raise ConfigError(
          f"unknown language code {code!r}: the model's languages are "
          f"{', '.join(self.codes)}; add it to language_table.languages"
      ) from None

  def ids(self, codes: Sequence[str]) -> list[int]:
    return [self.id(c) for c in codes]

  def group_id(self, code: str) -> int:
    return self.group_ids[self.id(code)]


@gin.configurable
def language_table(
    languages: Sequence[str] = DEMO_LANGUAGES,
    groups: Mapping[str, str] | None = None,
) -> LanguageTable:
  """Builds the model's language table from gin.

  Args:
    languages: language codes in id order. Appending a language keeps the ids
      of the others, so checkpoints stay compatible.
    groups: maps a language to the language whose blocks it shares, for
      example `{"mr": "hi"}`. Unlisted languages get a group of their own.

  Returns:
    The validated table.

  Raises:
    ConfigError: an invalid or unknown code, or a group that names a language
      missing from `languages`.
  """
  codes = tuple(validate_code(c) for c in languages)
  groups = dict(groups or {})
  for language, relative in groups.items():
    validate_code(language)
    validate_code(relative)
    if language not in codes:
      raise ConfigError(f"language_table.groups names {language!r}, which is "
                        f"not in language_table.languages: add it there first")
    if relative not in codes:
      raise ConfigError(f"language_table.groups maps {language!r} to "
                        f"{relative!r}, which is not in language_table."
                        "languages: add it there first")
    if relative in groups:
      raise ConfigError(f"language_table.groups maps {language!r} to "
                        f"{relative!r}, which is itself mapped: map both to "
                        "the same group language")
  group_of = tuple(groups.get(c, c) for c in codes)
  return LanguageTable(codes=codes, group_of=group_of)


def check_codes(codes: Sequence[str], table: LanguageTable,
                where: str) -> tuple[str, ...]:
  """Validates language codes from a configuration field against `table`.

  Args:
    codes: the configured codes.
    table: the model's language table.
    where: the gin parameter the codes came from, for the error message.

  Returns:
    The codes as a tuple.

  Raises:
    ConfigError: a code is not in `table`.
  """
  for code in codes:
    if code not in table:
      raise ConfigError(
          f"unknown language code {code!r} in {where}: known codes are "
          f"{', '.join(table.codes)}; fix the binding or add the language to "
          "language_table.languages")
  return tuple(codes)
