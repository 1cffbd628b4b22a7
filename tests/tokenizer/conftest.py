"""A small SentencePiece model trained once for the tokenizer tests."""

import pytest

from sutra_jax.data import corpus
from sutra_jax.tokenizer import train


@pytest.fixture(scope="session")
def small_training_args() -> dict:
  """Arguments of `train.train_sentencepiece` for the small model.

  60 texts of each demo language train a 1000-piece model in well under a
  second. The sample has more distinct characters than 1000 pieces can hold,
  so the rarest characters are encoded as bytes.
  """
  texts = corpus.demo_texts_by_language("train")
  return {
      "texts_by_language": {code: lines[:60] for code, lines in texts.items()},
      "vocab_size": 1000,
      "character_coverage": 0.98,
  }


@pytest.fixture(scope="session")
def small_model(tmp_path_factory, small_training_args) -> str:
  """Path of a 1000-piece unigram model of the demo corpus."""
  prefix = tmp_path_factory.mktemp("tokenizer") / "small"
  return train.train_sentencepiece(output_prefix=str(prefix),
                                   **small_training_args)
