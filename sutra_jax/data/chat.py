"""The chat format shared by training data, decoding and the tokenizer.

A conversation is one string in which each turn starts with its role marker
and a space, and turns follow each other without a separator:

    <|user|> Hello<|assistant|> Hi, how are you?<|user|> Fine.

Roles alternate and the first turn is the user's. The tokenizer keeps each
marker as a single piece (`sutra_jax.tokenizer.train` passes `MARKERS` to
SentencePiece as user-defined symbols). A decoding prompt ends with the
assistant marker, so the model's first piece carries the space that follows
the marker in training text (for example `▁Hi`).
"""

from typing import Sequence

USER = "<|user|>"
ASSISTANT = "<|assistant|>"
MARKERS = (USER, ASSISTANT)


def _role(turn_index: int) -> str:
  return USER if turn_index % 2 == 0 else ASSISTANT


def format_conversation(turns: Sequence[str]) -> str:
  """Joins turns into one chat string, starting with the user.

  Args:
    turns: the text of each turn, user first, then alternating roles.

  Returns:
    The conversation in the chat format.

  Raises:
    ValueError: `turns` is empty or a turn contains a role marker, which would
      make the roles ambiguous.
  """
  if not turns:
    raise ValueError("a conversation needs at least one turn")
  parts = []
  for i, text in enumerate(turns):
    for marker in MARKERS:
      if marker in text:
        raise ValueError(f"turn {i} contains the role marker {marker!r}: "
                         f"{text[:80]!r}; remove it from the text")
    parts.append(f"{_role(i)} {text}")
  return "".join(parts)


def format_prompt(user_text: str, history: Sequence[str] = ()) -> str:
  """Builds a decoding prompt that requests the assistant's next turn.

  Args:
    user_text: the user's new message.
    history: earlier turns, user first, with an even number of turns so that
      `user_text` is the user's.

  Returns:
    The conversation so far followed by the assistant marker.

  Raises:
    ValueError: `history` has an odd number of turns, or a turn contains a
      role marker.
  """
  if len(history) % 2:
    raise ValueError(f"history has {len(history)} turns; it must end with an "
                     "assistant turn, so pass an even number of turns")
  return format_conversation([*history, user_text]) + ASSISTANT


def parse_conversation(text: str) -> list[str]:
  """Splits a chat string from `format_conversation` back into turns.

  Raises:
    ValueError: `text` does not start with the user marker or the roles do
      not alternate.
  """
  if not text.startswith(USER):
    raise ValueError(f"a conversation starts with {USER!r}: got {text[:40]!r}")
  turns = []
  position = 0
  while position < len(text):
    marker = _role(len(turns))
    if not text.startswith(marker, position):
      raise ValueError(f"expected {marker!r} at character {position} of "
                       f"{text[:80]!r}")
    start = position + len(marker)
    next_marker = _role(len(turns) + 1)
    end = text.find(next_marker, start)
    end = len(text) if end < 0 else end
    turn = text[start:end].removeprefix(" ")
    if any(m in turn for m in MARKERS):
      raise ValueError(f"roles do not alternate in turn {len(turns)} of "
                       f"{text[:80]!r}")
    turns.append(turn)
    position = end
  return turns


def stop_token_ids(vocabulary) -> list[int]:
  """Returns the ids that end an assistant turn: EOS and the role markers.

  Args:
    vocabulary: a seqio vocabulary whose tokenizer keeps each marker as one
      piece (see `MARKERS`).
  """
  # Encoding a marker alone may add a leading word-boundary piece, so the
  # marker itself is the last id.
  return [vocabulary.eos_id] + [vocabulary.encode(m)[-1] for m in MARKERS]
