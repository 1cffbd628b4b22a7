"""Extending a SentencePiece model with the pieces of another one.

`merge_models` appends every piece of an added model that the base model
lacks, after the base's last id, so each base id keeps its piece and a
checkpoint trained with the base model only needs new embedding rows. The
id map it writes says which rows are new and where each piece of the added
model went, so new rows can be initialised from the added model's
embeddings.

Scores: a BPE base applies merges in score order, so new pieces get scores
below every base piece and in the added model's order; they apply after the
base's own merges. SentencePiece's BPE reaches a piece only through pieces
that are prefixes in its merge path, so add a BPE model to a BPE base (train
it with `--model_type bpe`). A unigram base keeps the added model's scores,
its log probabilities.
"""

import json
import os
import tempfile

from sentencepiece import sentencepiece_model_pb2

from sutra_jax.errors import DataError

_Piece = sentencepiece_model_pb2.ModelProto.SentencePiece
# Piece types that carry text; control, unknown, unused and byte pieces are
# never copied.
_TEXT_TYPES = (_Piece.NORMAL, _Piece.USER_DEFINED)
_BPE = sentencepiece_model_pb2.TrainerSpec.BPE


def load_model_proto(path: str) -> sentencepiece_model_pb2.ModelProto:
  """Reads a SentencePiece `.model` file.

  Raises:
    DataError: the file is missing or not a SentencePiece model.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise DataError(f"cannot read SentencePiece model {path!r}: "
                    f"{e.strerror}; check the path") from None
  model = sentencepiece_model_pb2.ModelProto()
  try:
    model.ParseFromString(data)
  except Exception:  # pylint: disable=broad-except
    # protobuf's DecodeError class depends on the backend.
    raise DataError(f"{path!r} is not a SentencePiece model") from None
  if not model.pieces:
    raise DataError(f"{path!r} is not a SentencePiece model: it has no "
                    "pieces")
  return model


def merge_protos(base: sentencepiece_model_pb2.ModelProto,
                 added: sentencepiece_model_pb2.ModelProto,
                 max_new_pieces: int | None = None
                 ) -> tuple[sentencepiece_model_pb2.ModelProto, list[int]]:
  """Appends the text pieces of `added` that `base` lacks.

  Args:
    base: the model whose ids are kept.
    added: the model whose new pieces are appended, in its id order.
    max_new_pieces: append at most this many; None appends all.

  Returns:
    The merged model, and for each id of `added` its id in the merged model
    (-1 for a byte or control piece that `base` does not have).
  """
  merged = sentencepiece_model_pb2.ModelProto()
  merged.CopyFrom(base)
  ids = {piece.piece: i for i, piece in enumerate(base.pieces)}
  lowest = min((p.score for p in base.pieces if p.type == _Piece.NORMAL),
               default=0.0)
  is_bpe = base.trainer_spec.model_type == _BPE
  added_ids = []
  appended = 0
  for piece in added.pieces:
    if piece.piece in ids:
      added_ids.append(ids[piece.piece])
      continue
    full = max_new_pieces is not None and appended >= max_new_pieces
    if piece.type not in _TEXT_TYPES or full:
      added_ids.append(-1)
      continue
    appended += 1
    new = merged.pieces.add()
    new.piece = piece.piece
    new.type = piece.type
    new.score = lowest - appended if is_bpe else piece.score
    ids[piece.piece] = len(merged.pieces) - 1
    added_ids.append(ids[piece.piece])
  merged.trainer_spec.vocab_size = len(merged.pieces)
  return merged, added_ids


def _write_atomically(path: str, data: bytes) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  with tempfile.NamedTemporaryFile(dir=folder, delete=False,
                                   suffix=".tmp") as f:
    f.write(data)
  os.replace(f.name, path)


def merge_models(base_path: str, added_path: str, output_prefix: str,
                 max_new_pieces: int | None = None) -> dict:
  """Writes PREFIX.model, PREFIX.vocab and PREFIX.id_map.json.

  Args:
    base_path: the SentencePiece model whose ids are kept, such as the
      Mistral/Mixtral tokenizer.
    added_path: the SentencePiece model whose pieces are added.
    output_prefix: the output path without its extension.
    max_new_pieces: append at most this many pieces; None appends all.

  Returns:
    The id map that PREFIX.id_map.json contains: `base_vocab_size`,
    `vocab_size`, `new_pieces` and `added_to_merged` (for each id of the
    added model, its merged id or -1).

  Raises:
    DataError: a model cannot be read.
  """
  base = load_model_proto(base_path)
  added = load_model_proto(added_path)
  merged, added_ids = merge_protos(base, added, max_new_pieces)
  id_map = {
      "base_model": os.path.abspath(base_path),
      "added_model": os.path.abspath(added_path),
      "base_vocab_size": len(base.pieces),
      "vocab_size": len(merged.pieces),
      "new_pieces": len(merged.pieces) - len(base.pieces),
      "added_to_merged": added_ids,
  }
  os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
  vocab = "".join(f"{p.piece}\t{p.score:g}\n" for p in merged.pieces)
  _write_atomically(output_prefix + ".vocab", vocab.encode("utf-8"))
  _write_atomically(output_prefix + ".id_map.json",
                    json.dumps(id_map, indent=1).encode("utf-8"))
  _write_atomically(output_prefix + ".model", merged.SerializeToString())
  return id_map
