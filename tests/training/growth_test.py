"""Tests of new language groups and merged-vocabulary rows at hand-off."""

import logging

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from sutra_jax import partitioning
from sutra_jax.errors import CheckpointError, ConfigError
from sutra_jax.training import growth
from sutra_jax.training import phases
from tests.training.phases_test import _save_run

GROUPS = ("en", "hi", "ta", "gu", "kn")


def test_plan_groups_copies_relative_and_mean():
  plan = growth.plan_groups(GROUPS, (("kn", "mean"), ("gu", "hi")))
  assert plan.old_count == 3
  assert plan.sources == (1, None)  # gu copies row 1 (hi); kn is the mean.
  saved = np.random.default_rng(0).normal(size=(3, 2, 4)).astype(np.float32)
  grown = growth.grow_groups(saved, plan)
  np.testing.assert_array_equal(grown[:3], saved)
  np.testing.assert_array_equal(grown[3], saved[1])
  np.testing.assert_allclose(grown[4], saved.astype(np.float64).mean(axis=0),
                             rtol=1e-6)


@pytest.mark.parametrize("declared, message", [
    ((("gu", "hi"),), r"last 1 groups"),
    ((("gu", "xx"), ("kn", "hi")), "not a trained group"),
    ((("gu", "kn"), ("kn", "hi")), "not a trained group"),
    ((("te", "hi"),), "not a language group"),
])
def test_plan_groups_rejects_bad_declarations(declared, message):
  with pytest.raises(ConfigError, match=message):
    growth.plan_groups(GROUPS, declared)


def test_restore_copies_relative_group_exactly(tmp_path, caplog):
  mesh = partitioning.make_mesh()
  rng = np.random.default_rng(1)
  old = {"encoder": {"w": rng.normal(size=(2, 3, 4)).astype(np.float32)},
         "decoder": {"w": rng.normal(size=(2, 4)).astype(np.float32)},
         "core": {"w": rng.normal(size=(2, 4)).astype(np.float32)}}
  _save_run(tmp_path, old, mesh)
  fresh = jax.device_put(
      {"encoder": {"w": np.full((3, 3, 4), 9.0, np.float32)},
       "decoder": {"w": np.full((3, 4), 9.0, np.float32)},
       "core": {"w": np.zeros((2, 4), np.float32)}},
      NamedSharding(mesh, P()))

  with caplog.at_level(logging.INFO):
    params = phases.restore_previous_phase(
        fresh, str(tmp_path), (), mesh,
        phases.Growth(group_names=("en", "hi", "gu"),
                      new_language_groups=(("gu", "hi"),)))

  for module in ("encoder", "decoder"):
    got = np.asarray(params[module]["w"])
    np.testing.assert_array_equal(got[:2], old[module]["w"])
    np.testing.assert_array_equal(got[2], old[module]["w"][1])
  # The core has 2 rows in both: it is restored, not grown.
  np.testing.assert_array_equal(params["core"]["w"], old["core"]["w"])
  assert ("Initialised encoder/w (3, 3, 4): groups (group 'gu' (row 2) = "
          "copy of group 'hi' (row 1))") in caplog.text


def test_restore_names_undeclared_new_group(tmp_path):
  mesh = partitioning.make_mesh()
  _save_run(tmp_path, {"encoder": {"w": np.zeros((2, 4), np.float32)}}, mesh)
  fresh = {"encoder": {"w": jax.numpy.zeros((3, 4))}}
  with pytest.raises(CheckpointError, match="new_language_groups"):
    phases.restore_previous_phase(fresh, str(tmp_path), (), mesh,
                                  phases.Growth(group_names=("en", "hi",
                                                             "gu")))


# --- vocabulary -------------------------------------------------------------

_TEXT = ["the cat sat on the mat", "a dog and a cat", "hello there world",
         "नमस्ते दुनिया", "the world is wide"] * 20
NEW_PIECES = ("\u2581hello", "\u2581the\u2581cat", "\u2581नमस्ते", "world")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
  """Returns (old model path, merged model path, old piece count).

  The merged model is the old one with pieces appended to its proto, which
  is how a merge keeps the old ids.
  """
  folder = tmp_path_factory.mktemp("spm")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_TEXT), model_prefix=str(folder / "old"),
      vocab_size=40, model_type="unigram", character_coverage=1.0,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
      split_by_whitespace=False)
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString((folder / "old.model").read_bytes())
  old_size = len(proto.pieces)
  existing = {p.piece for p in proto.pieces}
  for piece in NEW_PIECES:
    assert piece not in existing
    proto.pieces.add(piece=piece, score=0.0)
  (folder / "merged.model").write_bytes(proto.SerializeToString())
  return str(folder / "old.model"), str(folder / "merged.model"), old_size


def test_piece_sources_split_new_pieces_with_old_tokenizer(tokenizers):
  old_path, merged_path, _ = tokenizers
  sources = growth.piece_sources(old_path, merged_path)
  old = spm.SentencePieceProcessor(model_file=old_path)
  assert len(sources) == len(NEW_PIECES)
  # Pieces that start a word: the old tokenizer's usual encoding of the
  # text (which adds the word boundary itself) is the reference.
  for piece, ids in zip(NEW_PIECES[:3], sources):
    assert list(ids) == old.encode(piece[1:].replace("\u2581", " "))
  # A piece inside a word must not gain a word boundary.
  assert "".join(old.id_to_piece(i) for i in sources[3]) == "world"


def test_grow_vocabulary_matches_numpy_reference(tokenizers):
  old_path, merged_path, old_size = tokenizers
  sources = growth.piece_sources(old_path, merged_path)
  old = spm.SentencePieceProcessor(model_file=old_path)
  rng = np.random.default_rng(2)
  new_size = old_size + len(NEW_PIECES)
  embedding = rng.normal(size=(old_size, 8)).astype(np.float32)
  head = rng.normal(size=(8, old_size)).astype(np.float32)

  grown_embedding = growth.grow_vocabulary(
      embedding, np.zeros((new_size, 8), np.float32), sources)
  grown_head = growth.grow_vocabulary(
      head, np.zeros((8, new_size), np.float32), sources)

  np.testing.assert_array_equal(grown_embedding[:old_size], embedding)
  np.testing.assert_array_equal(grown_head[:, :old_size], head)
  for n, piece in enumerate(NEW_PIECES[:3]):
    ids = old.encode(piece[1:].replace("\u2581", " "))
    np.testing.assert_allclose(grown_embedding[old_size + n],
                               embedding[ids].astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(grown_head[:, old_size + n],
                               head[:, ids].astype(np.float64).mean(axis=1), rtol=1e-6)


def test_piece_sources_reject_reordered_vocabulary(tokenizers, tmp_path):
  old_path, _, _ = tokenizers
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(open(old_path, "rb").read())
  proto.pieces[5].piece, proto.pieces[6].piece = (proto.pieces[6].piece,
                                                  proto.pieces[5].piece)
  other = tmp_path / "other.model"
  other.write_bytes(proto.SerializeToString())
  with pytest.raises(CheckpointError, match="id 5"):
    growth.piece_sources(old_path, str(other))


def test_restore_initialises_pieces_from_checkpoint(tokenizers, tmp_path):
  old_path, merged_path, old_size = tokenizers
  mesh = partitioning.make_mesh()
  rng = np.random.default_rng(3)
  old = {"embed": {"embedding": rng.normal(size=(old_size, 4)).astype(
      np.float32)},
         "lm_head": {"kernel": rng.normal(size=(4, old_size)).astype(
             np.float32)}}
  _save_run(tmp_path, old, mesh)
  new_size = old_size + len(NEW_PIECES)
  fresh = jax.device_put(
      {"embed": {"embedding": np.zeros((new_size, 4), np.float32)},
       "lm_head": {"kernel": np.zeros((4, new_size), np.float32)}},
      NamedSharding(mesh, P()))

  params = phases.restore_previous_phase(
      fresh, str(tmp_path), (("^embed/", "pieces"), ("^lm_head/", "pieces")),
      mesh, phases.Growth(previous_vocabulary=old_path,
                          vocabulary=merged_path))

  sources = growth.piece_sources(old_path, merged_path)
  for n, ids in enumerate(sources):
    np.testing.assert_allclose(params["embed"]["embedding"][old_size + n],
                               old["embed"]["embedding"][list(ids)].astype(np.float64).mean(0),
                               rtol=1e-6)
    np.testing.assert_allclose(params["lm_head"]["kernel"][:, old_size + n],
                               old["lm_head"]["kernel"][:, list(ids)].astype(
                                   np.float64).mean(1),
                               rtol=1e-6)


def test_pieces_need_previous_vocabulary():
  with pytest.raises(ConfigError, match="previous_vocabulary"):
    phases.PhaseConfig(new_parameters={"^embed/": "pieces"})
