"""A small SentencePiece vocabulary trained once for the data tests."""

import pytest

from sutra_jax.data import corpus
from sutra_jax.tokenizer import train

# 60 texts of each demo language train a 1000-piece model in well under a
# second; the rarest characters are encoded as bytes.
TEXTS_PER_LANGUAGE = 60
VOCAB_SIZE = 1000


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> str:
  """Path of a 1000-piece unigram model of the demo corpus."""
  texts = {
      code: lines[:TEXTS_PER_LANGUAGE]
      for code, lines in corpus.demo_texts_by_language("train").items()
  }
  prefix = tmp_path_factory.mktemp("tokenizer") / "small"
  return train.train_sentencepiece(texts, str(prefix), VOCAB_SIZE,
                                   character_coverage=0.98)


@pytest.fixture(scope="session")
def vocabulary(model_path):
  """The small model as a seqio vocabulary."""
  from sutra_jax.data import tasks  # pylint: disable=g-import-not-at-top
  return tasks.sentencepiece_vocabulary(model_path)
