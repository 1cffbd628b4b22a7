"""Vocabularies for the evaluation tests: a hand-built one and a trained one."""

import pytest
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from sutra_jax.data import corpus
from sutra_jax.data import tasks
from sutra_jax.tokenizer import train

# Pieces of the hand-built unigram model, after PAD, EOS and UNK. Word pieces
# score higher than the characters they are made of, so `▁A` wins over
# `▁` + `A` wherever both fit.
HAND_BUILT_PIECES = {
    "▁": -5.0, "A": -5.0, "B": -5.0, "?": -2.0, ":": -2.0,
    "▁A": -1.0, "▁B": -1.0, "▁Q": -1.0, "▁Answer": -1.0,
}


@pytest.fixture(scope="session")
def hand_built_vocabulary(tmp_path_factory):
  """A seqio vocabulary over a unigram model written piece by piece.

  Whitespace is kept as it is (no normalisation), so " A" on its own
  encodes as two pieces, `▁` and `▁A`, while after "Answer:" in running
  text it is the single piece `▁A`.
  """
  proto = model_pb2.ModelProto()
  proto.trainer_spec.model_type = model_pb2.TrainerSpec.UNIGRAM
  proto.trainer_spec.vocab_size = 3 + len(HAND_BUILT_PIECES)
  proto.trainer_spec.pad_id, proto.trainer_spec.eos_id = 0, 1
  proto.trainer_spec.unk_id, proto.trainer_spec.bos_id = 2, -1
  proto.normalizer_spec.name = "identity"
  proto.normalizer_spec.add_dummy_prefix = True
  proto.normalizer_spec.remove_extra_whitespaces = False
  proto.normalizer_spec.escape_whitespaces = True
  piece_type = model_pb2.ModelProto.SentencePiece
  for text, kind in (("<pad>", piece_type.CONTROL), ("</s>", piece_type.CONTROL),
                     ("<unk>", piece_type.UNKNOWN)):
    piece = proto.pieces.add()
    piece.piece, piece.score, piece.type = text, 0.0, kind
  for text, score in HAND_BUILT_PIECES.items():
    piece = proto.pieces.add()
    piece.piece, piece.score, piece.type = text, score, piece_type.NORMAL
  path = tmp_path_factory.mktemp("hand_built") / "hand_built.model"
  path.write_bytes(proto.SerializeToString())
  return tasks.sentencepiece_vocabulary(str(path))


@pytest.fixture(scope="session")
def vocabulary(tmp_path_factory):
  """A 1000-piece unigram vocabulary of the demo corpus (under a second)."""
  texts = {code: lines[:60] for code, lines in
           corpus.demo_texts_by_language("train").items()}
  prefix = tmp_path_factory.mktemp("tokenizer") / "small"
  path = train.train_sentencepiece(texts, str(prefix), 1000,
                                   character_coverage=0.98)
  return tasks.sentencepiece_vocabulary(path)
