"""Tests for stop strings of the text generator."""

from sutra_jax.data import corpus
from sutra_jax.data import tasks
from sutra_jax.inference import text_generation
from sutra_jax.tokenizer import train


def test_stop_sequences_cover_running_text(tmp_path):
  texts = {code: lines[:60] for code, lines in
           corpus.demo_texts_by_language("train").items()}
  path = train.train_sentencepiece(texts, str(tmp_path / "spm"), 1000,
                                   character_coverage=0.98)
  vocabulary = tasks.sentencepiece_vocabulary(path)
  sequences = text_generation.stop_sequences(vocabulary, ["Bye.", "."])

  running = vocabulary.encode("Hello there. Bye.")
  assert tuple(vocabulary.encode("Bye.")) in sequences
  for sequence in sequences:
    assert vocabulary.decode(list(sequence)).strip() in ("Bye.", ".")
  # Each stop string, as it appears inside the text, is one of the sequences.
  assert any(tuple(running[i:i + len(s)]) == s
             for s in sequences for i in range(len(running)))


def test_cut_at_first_stop():
  assert text_generation.cut_at_stop("one. two! three", ["!", "."]) == "one"
  assert text_generation.cut_at_stop("no stop", ["."]) == "no stop"
