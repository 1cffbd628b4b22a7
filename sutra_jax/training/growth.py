"""Initial values of the rows that a phase adds to trained parameters.

Two things grow between phases, and both keep the trained rows:

* **Language groups.** Adding a language with its own group appends one
  group to `language_table`, so every language-block weight of shape
  [G, ...] gains a row. A new row starts as a copy of a named relative
  group (Gujarati from Hindi) or as the mean of the trained groups.
* **Vocabulary.** Merging a tokenizer appends pieces and keeps the old ids,
  so `embed/embedding` [V, D] and, when untied, `lm_head/kernel` [D, V]
  gain rows along their vocabulary axis. A new piece starts as the mean of
  the rows of the pieces that the old tokenizer splits its text into.

The functions here work on NumPy arrays on the host: the tensors they touch
are embeddings and language blocks, and each runs once per hand-off.
"""

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from sutra_jax.errors import CheckpointError, ConfigError

# The value of `PhaseConfig.new_language_groups` that averages the trained
# groups instead of copying one relative.
MEAN = "mean"

# SentencePiece writes a word boundary as this character (U+2581).
_WORD_BOUNDARY = "\u2581"


@dataclasses.dataclass(frozen=True)
class GroupGrowth:
  """How the rows of new language groups start.

  Attributes:
    old_count: G_old, the groups of the checkpoint; they keep their rows.
    sources: for each new group, in row order (rows G_old, G_old + 1, ...),
      the row it copies, or None for the mean of rows 0 .. G_old - 1.
    description: one line per new group for the hand-off log.
  """

  old_count: int
  sources: tuple[int | None, ...]
  description: tuple[str, ...]


def plan_groups(group_names: Sequence[str],
                new_groups: Sequence[tuple[str, str]]) -> GroupGrowth | None:
  """Checks `PhaseConfig.new_language_groups` against the language table.

  New groups must be the last groups of the table, which is where appending
  a language to `language_table.languages` puts its group, so the ids of the
  trained groups do not move.

  Args:
    group_names: the group names of the new model's table, in id order.
    new_groups: (group, source) pairs, where source is the name of a trained
      group or `MEAN`.

  Returns:
    The plan, or None when no group is new.

  Raises:
    ConfigError: a declared group is not in the table or is not among its
      last groups, a source is not a trained group, or a name repeats.
  """
  if not new_groups:
    return None
  names = [name for name, _ in new_groups]
  if len(set(names)) != len(names):
    raise ConfigError(f"PhaseConfig.new_language_groups names a group twice: "
                      f"{names}")
  for name in names:
    if name not in group_names:
      raise ConfigError(
          f"PhaseConfig.new_language_groups names {name!r}, which is not a "
          f"language group of language_table ({', '.join(group_names)}); add"
          " the language to language_table.languages")
  old_count = len(group_names) - len(names)
  trained = tuple(group_names[:old_count])
  if set(names) != set(group_names[old_count:]):
    raise ConfigError(
        f"PhaseConfig.new_language_groups declares {names}, but the last "
        f"{len(names)} groups of language_table are "
        f"{list(group_names[old_count:])}: append new languages at the end of"
        " language_table.languages and declare exactly those groups")
  declared = dict(new_groups)
  sources, description = [], []
  for row in range(old_count, len(group_names)):
    name = group_names[row]
    source = declared[name]
    if source == MEAN:
      sources.append(None)
      description.append(f"group {name!r} (row {row}) = mean of the "
                         f"{old_count} trained groups")
    elif source in trained:
      sources.append(trained.index(source))
      description.append(f"group {name!r} (row {row}) = copy of group "
                         f"{source!r} (row {trained.index(source)})")
    else:
      raise ConfigError(
          f"PhaseConfig.new_language_groups initialises {name!r} from "
          f"{source!r}, which is not a trained group; use one of "
          f"{', '.join(trained)} or {MEAN!r}")
  return GroupGrowth(old_count=old_count, sources=tuple(sources),
                     description=tuple(description))


def grow_groups(saved: np.ndarray, growth: GroupGrowth) -> np.ndarray:
  """Returns `saved` [G_old, ...] with the new groups' rows appended."""
  new_rows = [saved[s] if s is not None else
              saved.astype(np.float64).mean(axis=0).astype(saved.dtype)
              for s in growth.sources]
  return np.concatenate([saved, np.stack(new_rows)], axis=0)


# ---------------------------------------------------------------------------
# Vocabulary.


def _load(model_path: str):
  """Loads a SentencePiece model with its normalizer spec."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top

  try:
    with open(model_path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ConfigError(f"cannot read the SentencePiece model {model_path!r} "
                      f"({e.strerror or e}); fix the path") from None
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(data)
  return spm.SentencePieceProcessor(model_proto=data), proto


def _piece_splitter(old_proto):
  """Returns a processor that encodes text exactly as written.

  SentencePiece normally prepends a word boundary to the text and folds
  whitespace. A piece's text is encoded as it is, with its own boundary
  marker turned back into a space, so both are switched off.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  proto = type(old_proto)()
  proto.CopyFrom(old_proto)
  proto.normalizer_spec.add_dummy_prefix = False
  proto.normalizer_spec.remove_extra_whitespaces = False
  return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def piece_sources(old_model: str, new_model: str) -> tuple[tuple[int, ...],
                                                           ...]:
  """Finds, for each piece the merge added, the old ids of its text.

  Args:
    old_model: the SentencePiece model the checkpoint was trained with.
    new_model: the merged model; its first V_old pieces must be the old
      model's pieces with the same ids.

  Returns:
    One tuple of old ids per new id V_old .. V_new - 1, in id order. A
    piece whose text the old model cannot split (a control piece) gets ().

  Raises:
    CheckpointError: the new model does not keep the old pieces and ids.
  """
  old, old_proto = _load(old_model)
  new, _ = _load(new_model)
  old_size, new_size = old.get_piece_size(), new.get_piece_size()
  for i in range(min(old_size, new_size)):
    if old.id_to_piece(i) != new.id_to_piece(i):
      raise CheckpointError(
          f"the vocabulary {new_model!r} does not extend {old_model!r}: id {i}"
          f" is {new.id_to_piece(i)!r} there and {old.id_to_piece(i)!r} in "
          "the old model. Merge the tokenizers so that old pieces keep their "
          "ids")
  if new_size < old_size:
    raise CheckpointError(
        f"the vocabulary {new_model!r} has {new_size} pieces, fewer than the "
        f"{old_size} of {old_model!r}; it must extend the old vocabulary")
  splitter = _piece_splitter(old_proto)
  sources = []
  for i in range(old_size, new_size):
    if new.is_control(i) or new.is_unknown(i):
      sources.append(())
      continue
    text = new.id_to_piece(i).replace(_WORD_BOUNDARY, " ")
    sources.append(tuple(splitter.encode(text)))
  return tuple(sources)


def grow_vocabulary(saved: np.ndarray, fresh: np.ndarray,
                    sources: Sequence[Sequence[int]]) -> np.ndarray:
  """Appends the new pieces' rows along the vocabulary axis.

  The vocabulary axis is the one where `saved` and `fresh` differ: axis 0 of
  an embedding [V, D], axis 1 of an output head [D, V].

  Args:
    saved: the trained tensor with V_old entries on its vocabulary axis.
    fresh: the new model's freshly initialised tensor with V_new entries.
    sources: `piece_sources` of the merge, V_new - V_old tuples.

  Returns:
    An array shaped like `fresh`: the saved entries, then for each new piece
    the mean of the saved entries of its old ids. A piece without old ids
    keeps its fresh entry.

  Raises:
    CheckpointError: the shapes differ in more than one axis, or the number
      of new entries is not `len(sources)`.
  """
  differing = [a for a in range(fresh.ndim)
               if saved.ndim != fresh.ndim or saved.shape[a] != fresh.shape[a]]
  if len(differing) != 1 or (
      fresh.shape[differing[0]] - saved.shape[differing[0]] != len(sources)):
    raise CheckpointError(
        f"cannot grow a tensor of shape {saved.shape} to {fresh.shape} with "
        f"{len(sources)} new vocabulary pieces; the vocabulary axis must be "
        "the only one that grows, by the pieces the merge added")
  axis = differing[0]
  saved_rows = np.moveaxis(saved, axis, 0)
  fresh_rows = np.moveaxis(fresh, axis, 0)
  new_rows = [
      saved_rows[list(ids)].astype(np.float64).mean(axis=0).astype(
          saved.dtype) if ids else fresh_rows[saved_rows.shape[0] + n]
      for n, ids in enumerate(sources)
  ]
  grown = np.concatenate([saved_rows, np.stack(new_rows)], axis=0)
  return np.moveaxis(grown, 0, axis)


def describe_sources(sources: Sequence[Sequence[int]]) -> str:
  """Summarises `piece_sources` for the hand-off log."""
  empty = sum(1 for ids in sources if not ids)
  average = sum(len(ids) for ids in sources) / max(len(sources), 1)
  text = (f"{len(sources)} new pieces = mean of their old pieces, "
          f"{average:.2f} on average")
  if empty:
    text += f"; {empty} control pieces keep the fresh initialiser"
  return text


def as_pairs(value: Mapping[str, str] | Sequence[tuple[str, str]],
             where: str) -> tuple[tuple[str, str], ...]:
  """Converts a gin dict or list of pairs to a tuple of (key, value) pairs."""
  items = value.items() if isinstance(value, Mapping) else value
  pairs = []
  for item in items:
    if isinstance(item, str) or len(item) != 2:
      raise ConfigError(f"invalid entry {item!r} in {where}: expected "
                        "{key: value} or a list of (key, value) pairs")
    pairs.append((item[0], item[1]))
  return tuple(pairs)
