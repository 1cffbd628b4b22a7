"""Tests of SentencePiece training, sampling and fertility."""

import math
import os

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from sutra_jax import languages
from sutra_jax.data import chat
from sutra_jax.data import corpus
from sutra_jax.errors import ConfigError
from sutra_jax.errors import DataError
from sutra_jax.tokenizer import train


@pytest.fixture(scope="module")
def processor(small_model):
  return spm.SentencePieceProcessor(model_file=small_model)


@pytest.mark.parametrize("code", languages.DEMO_LANGUAGES)
def test_round_trip_every_language(processor, code):
  # Held-out text, so characters missing from the model take the byte path.
  samples = (corpus.demo_texts_by_language("validation")[code][:20] +
             corpus.conversations(code, "validation")[:5])
  assert samples
  for text in samples:
    assert processor.decode(processor.encode(text)) == text


@pytest.mark.parametrize("text", [
    " leading space", "two  spaces", "trailing space ", "tab\there",
    "line\nbreak", "", "   ", "ｆｕｌｌｗｉｄｔｈ", "😀 emoji", "１２３ 456",
])
def test_round_trip_keeps_whitespace_and_forms(processor, text):
  assert processor.decode(processor.encode(text)) == text


def test_chat_markers_are_single_pieces(processor):
  text = chat.format_conversation(["Hello", "नमस्ते"])
  pieces = processor.encode(text, out_type=str)
  for marker in chat.MARKERS:
    assert marker in pieces
    marker_id = processor.piece_to_id(marker)
    assert processor.id_to_piece(marker_id) == marker
    assert processor.is_control(marker_id) is False
  assert processor.decode(processor.encode(text)) == text


def test_special_ids_follow_seqio(processor, small_training_args):
  assert processor.pad_id() == 0
  assert processor.eos_id() == 1
  assert processor.unk_id() == 2
  assert processor.bos_id() == -1
  assert processor.get_piece_size() == small_training_args["vocab_size"]


def test_unseen_character_uses_bytes(processor):
  pieces = processor.encode("𓀀", out_type=str)  # An Egyptian hieroglyph.
  assert pieces[-4:] == ["<0xF0>", "<0x93>", "<0x80>", "<0x80>"]
  assert processor.unk_id() not in processor.encode("𓀀")


def test_digits_are_split(processor):
  learned = [processor.id_to_piece(i)
             for i in range(processor.get_piece_size())
             if not processor.is_byte(i)]
  assert not [p for p in learned if sum(ch.isdigit() for ch in p) > 1]
  assert len(processor.encode("2024")) >= 4


def test_split_long_line_on_spaces():
  line = "word " * 30
  chunks = train.split_long_line(line, max_bytes=32)
  assert "".join(chunks) == line
  assert all(len(c.encode()) <= 32 for c in chunks)
  assert all(c.endswith(" ") for c in chunks[:-1])


def test_split_long_line_without_spaces():
  line = "日本語" * 20  # 3 bytes per character.
  chunks = train.split_long_line(line, max_bytes=10)
  assert "".join(chunks) == line
  assert all(len(c.encode()) <= 10 for c in chunks)
  assert len(chunks[0]) == 3


def test_long_lines_are_kept():
  lines = train._training_lines(["short", "x" * 9000, "  "], max_bytes=4192)
  assert lines[0] == "short"
  assert "".join(lines[1:]) == "x" * 9000
  assert len(lines) == 4


def test_quotas_follow_temperature():
  quotas = train.language_quotas({"en": 900, "ta": 100, "th": 0},
                                 temperature=2.0, total=400)
  # sqrt(900) : sqrt(100) = 3 : 1.
  assert quotas == {"en": 300, "ta": 100}


def test_small_language_upsampled_whole():
  lines = {"en": [f"en {i}" for i in range(1000)], "th": ["a", "b", "c"]}
  sample = train.balanced_sample(lines, temperature=1e9, total=100, seed=0)
  thai = [line for line in sample if not line.startswith("en")]
  assert len(thai) == 50
  assert set(thai) == {"a", "b", "c"}
  assert min(thai.count(x) for x in "abc") >= 16


def test_sample_depends_on_seed():
  lines = {"en": [str(i) for i in range(100)]}
  assert (train.balanced_sample(lines, 1.0, 50, seed=1) ==
          train.balanced_sample(lines, 1.0, 50, seed=1))
  assert (train.balanced_sample(lines, 1.0, 50, seed=1) !=
          train.balanced_sample(lines, 1.0, 50, seed=2))


def _pieces_and_scores(model_path):
  model = sentencepiece_model_pb2.ModelProto()
  with open(model_path, "rb") as f:
    model.ParseFromString(f.read())
  return [(p.piece, p.score, p.type) for p in model.pieces]


def test_training_is_deterministic(tmp_path, small_model,
                                   small_training_args):
  again = train.train_sentencepiece(output_prefix=str(tmp_path / "again"),
                                    **small_training_args)
  first, second = (_pieces_and_scores(p) for p in (small_model, again))
  assert first == second


def test_output_replaced_without_leftovers(tmp_path):
  texts = {"en": corpus.demo_texts_by_language("train")["en"][:200]}
  prefix = tmp_path / "out" / "spm"
  for model_type in ("unigram", "bpe"):
    path = train.train_sentencepiece(texts, str(prefix), 400,
                                     model_type=model_type)
    assert path == str(prefix) + ".model"
    processor = spm.SentencePieceProcessor(model_file=path)
    assert processor.get_piece_size() == 400
  assert sorted(os.listdir(tmp_path / "out")) == ["spm.model", "spm.vocab"]
  model = sentencepiece_model_pb2.ModelProto()
  model.ParseFromString((tmp_path / "out" / "spm.model").read_bytes())
  assert model.trainer_spec.model_prefix == str(prefix)


def test_vocab_too_large_names_limit(tmp_path):
  texts = {"en": ["a tiny corpus", "with few words"]}
  with pytest.raises(DataError, match=r"too large.*--vocab_size \d+ or less"):
    train.train_sentencepiece(texts, str(tmp_path / "m"), 5000)
  assert os.listdir(tmp_path) == []


def test_vocab_below_characters_names_fix(tmp_path):
  texts = {"zh": ["".join(chr(0x4E00 + i) for i in range(800))]}
  with pytest.raises(DataError, match="character_coverage"):
    train.train_sentencepiece(texts, str(tmp_path / "m"), 600)


@pytest.mark.parametrize("kwargs, match", [
    ({"vocab_size": 100}, "at least 262"),
    ({"vocab_size": "8000"}, "invalid vocab_size"),
    ({"model_type": "char"}, "'char'"),
    ({"temperature": 0}, "invalid temperature"),
    ({"character_coverage": 0.5}, "character_coverage"),
    ({"sample_lines": 0}, "invalid sample_lines"),
])
def test_invalid_arguments_raise(tmp_path, kwargs, match):
  args = {"vocab_size": 1000, **kwargs}
  with pytest.raises(ConfigError, match=match):
    train.train_sentencepiece({"en": ["hello"]}, str(tmp_path / "m"), **args)


def test_unknown_language_code_raises(tmp_path):
  with pytest.raises(ConfigError, match="'xx'"):
    train.train_sentencepiece({"xx": ["hello"]}, str(tmp_path / "m"), 1000)


def test_empty_texts_raise(tmp_path):
  with pytest.raises(DataError, match="no training text"):
    train.train_sentencepiece({"en": ["", "  "]}, str(tmp_path / "m"), 1000)


def test_tokens_per_word(small_model, processor):
  texts = {"en": ["hello world", "a b c"], "ja": ["日本語です"]}
  fertility = train.tokens_per_word(small_model, texts)
  english_tokens = sum(len(processor.encode(t)) for t in texts["en"])
  assert fertility["en"] == pytest.approx(english_tokens / 5)
  # Japanese words are counted as characters.
  assert fertility["ja"] == pytest.approx(
      len(processor.encode("日本語です")) / 5)


def test_tokens_per_word_missing_model(tmp_path):
  with pytest.raises(DataError, match="cannot load"):
    train.tokens_per_word(str(tmp_path / "missing.model"), {"en": ["a"]})


def test_split_long_line_tiny_limit():
  assert train.split_long_line("日本", max_bytes=2) == ["日", "本"]


def _parallel_texts():
  english = [f"the weather on day {i} was fine" for i in range(150)]
  hindi = [f"दिन {i} को मौसम अच्छा था" for i in range(150)]
  return {"en": english, "hi": hindi}


def test_parity_weights_match_counts(tmp_path):
  texts = _parallel_texts()
  texts["ta"] = ["ஒரு வரி"]  # Not parallel: keeps weight 1.
  model = train.train_sentencepiece(texts, str(tmp_path / "p"), 320,
                                    model_type="bpe")
  processor = spm.SentencePieceProcessor(model_file=model)
  tokens = {c: sum(len(processor.encode(l)) for l in lines)
            for c, lines in texts.items()}
  weights = train.parity_weights(model, texts, "en", strength=2.0)
  assert weights["en"] == 1.0
  assert weights["hi"] == pytest.approx((tokens["hi"] / tokens["en"])**2)
  assert weights["ta"] == 1.0


def test_parity_round_evens_out_ratio(tmp_path, shared_data):
  from sutra_jax.tokenizer import fertility  # pylint: disable=g-import-not-at-top
  parallel = fertility.read_parallel_dir(
      str(shared_data / "ntrex128_dev_subset"))
  texts = {c: parallel[c][:150] for c in ("eng", "hin", "mal", "fra")}

  def worst_ratio(model):
    processor = spm.SentencePieceProcessor(model_file=model)
    counts = {c: sum(len(processor.encode(l)) for l in lines)
              for c, lines in texts.items()}
    return max(counts[c] / counts["eng"] for c in texts)

  once = worst_ratio(train.train_with_parity(
      texts, str(tmp_path / "a"), 3000, rounds=0, model_type="bpe"))
  balanced = worst_ratio(train.train_with_parity(
      texts, str(tmp_path / "b"), 3000, rounds=1, model_type="bpe"))
  assert balanced < once, (balanced, once)


def test_parity_needs_english(tmp_path):
  with pytest.raises(ConfigError, match="parity rounds need English"):
    train.train_with_parity({"hi": ["एक"]}, str(tmp_path / "x"), 300,
                            rounds=1)


def test_uniform_quotas_ignore_sizes():
  quotas = train.language_quotas({"en": 900, "ta": 100}, math.inf, 1000)
  assert quotas == {"en": 500, "ta": 500}
  weighted = train.language_quotas({"en": 900, "ta": 100}, math.inf, 1000,
                                   {"ta": 3.0})
  assert weighted == {"en": 250, "ta": 750}
