"""Tests of the embedded demo corpus and its held-out split."""

import random

import pytest

from sutra_jax import languages
from sutra_jax.data import chat
from sutra_jax.data import corpus
from sutra_jax.errors import ConfigError
from sutra_jax.errors import DataError


@pytest.mark.parametrize("code", languages.DEMO_LANGUAGES)
def test_conversations_have_both_splits(code):
  train = corpus.conversations(code, "train")
  validation = corpus.conversations(code, "validation")
  assert train
  assert validation
  assert not set(train) & set(validation)


def test_conversations_use_chat_format():
  for text in corpus.conversations("hi", "train"):
    assert text.startswith(chat.USER + " ")
    assert chat.ASSISTANT in text
    assert chat.format_conversation(chat.parse_conversation(text)) == text


def test_conversation_split_partitions_all():
  train = corpus.conversation_turns("en", "train")
  validation = corpus.conversation_turns("en", "validation")
  everything = corpus._all_conversations("en")
  assert sorted(train + validation) == sorted(everything)
  assert len(set(everything)) == len(everything)


def test_validation_fraction_near_ten_percent():
  train = corpus.conversations("en", "train")
  validation = corpus.conversations("en", "validation")
  fraction = len(validation) / (len(train) + len(validation))
  assert 0.06 < fraction < 0.14


def test_hash_fraction_is_fixed():
  # SHA-256("hello") starts with 2cf24dba5fb0a30e.
  assert corpus._hash_fraction("hello") == 0x2cf24dba5fb0a30e / 2**64


def test_split_stable_when_examples_added():
  keys = [f"example {i}" for i in range(500)]
  before = set(corpus.split_examples(keys, str, "validation"))
  more = keys + [f"new example {i}" for i in range(500)]
  after = set(corpus.split_examples(more, str, "validation"))
  assert before == after & set(keys)


def test_split_ignores_example_order():
  keys = [f"example {i}" for i in range(300)]
  shuffled = list(keys)
  random.Random(0).shuffle(shuffled)
  assert (set(corpus.split_examples(keys, str, "validation")) ==
          set(corpus.split_examples(shuffled, str, "validation")))


def test_split_tops_up_small_languages():
  # None of these keys hashes into the 10% slice.
  keys = [k for k in (f"k{i}" for i in range(100))
          if corpus._hash_fraction(k) >= corpus.VALIDATION_FRACTION][:5]
  validation = corpus.split_examples(keys, str, "validation")
  train = corpus.split_examples(keys, str, "train")
  assert len(validation) == corpus.MIN_VALIDATION_EXAMPLES
  lowest = sorted(keys, key=corpus._hash_fraction)[:2]
  assert sorted(validation) == sorted(lowest)
  assert sorted(train + validation) == sorted(keys)


def test_split_keeps_single_example_for_training():
  assert corpus.split_examples(["only"], str, "train") == ["only"]
  assert corpus.split_examples(["only"], str, "validation") == []


def test_lexicon_covers_twenty_languages():
  codes = corpus.lexicon_languages()
  assert len(codes) >= 20
  assert "en" not in codes
  for code in codes:
    train = corpus.lexicon(code, "train")
    validation = corpus.lexicon(code, "validation")
    assert train, code
    assert validation, code
    assert all(english != translation for english, translation in train)


def test_lexicon_translates_country_names():
  pairs = dict(corpus.lexicon("de", "train") + corpus.lexicon("de",
                                                              "validation"))
  assert pairs["Germany"] == "Deutschland"
  pairs = dict(corpus.lexicon("zh-Hant", "train") +
               corpus.lexicon("zh-Hant", "validation"))
  assert pairs["Japan"] == "日本"


def test_lexicon_holds_out_names_in_every_language():
  held_out = {english for english, _ in corpus.lexicon("hi", "validation")}
  trained = {english for english, _ in corpus.lexicon("ta", "train")}
  assert held_out
  assert not held_out & trained


def test_unknown_language_raises_config_error():
  with pytest.raises(ConfigError, match="'xx'"):
    corpus.conversations("xx", "train")
  with pytest.raises(ConfigError, match="'hi-Latn'"):
    corpus.lexicon("hi-Latn", "train")


def test_unknown_split_raises_config_error():
  with pytest.raises(ConfigError, match="'test'"):
    corpus.conversations("hi", "test")


def test_malformed_yaml_names_file(tmp_path):
  path = tmp_path / "broken.yml"
  path.write_text("conversations:\n- - 'unterminated\n  - [\n",
                  encoding="utf-8")
  with pytest.raises(DataError, match="broken.yml"):
    corpus.read_conversation_file(path)


def test_yaml_without_conversations_names_file(tmp_path):
  path = tmp_path / "empty.yml"
  path.write_text("categories:\n- greetings\n", encoding="utf-8")
  with pytest.raises(DataError, match="empty.yml"):
    corpus.read_conversation_file(path)


def test_malformed_entries_are_skipped(tmp_path):
  path = tmp_path / "mixed.yml"
  path.write_text(
      "conversations:\n"
      "- - ' Hello '\n  - Hi\n"
      "- Hello - Hi\n"           # One string: a YAML line-break mistake.
      "- - Alone\n"              # A single turn.
      "- - 42\n  - Number\n"     # A turn that is not a string.
      "- - ''\n  - Empty\n",     # An empty turn.
      encoding="utf-8")
  assert corpus.read_conversation_file(path) == [("Hello", "Hi")]


def test_demo_texts_cover_every_language():
  texts = corpus.demo_texts_by_language("train")
  assert list(texts) == list(languages.DEMO_LANGUAGES)
  for code, lines in texts.items():
    assert lines, code
    assert not any(m in line for line in lines for m in chat.MARKERS)
  assert "Germany" in texts["en"]
  assert "Deutschland" in texts["de"]
