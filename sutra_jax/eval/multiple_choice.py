"""Multiple-choice questions as text, shared by the MMLU and XCOPA readers.

A benchmark reader turns its files into `Question`s: a context (the prompt,
few-shot examples included) and one continuation per choice. Rank
classification scores every (context, continuation) pair with the model and
picks the best continuation; `sutra_jax.eval.rank_classification` does that
through seqio tasks.
"""

import dataclasses

# Scoring modes: the answer letter after a prompt that lists the options, or
# the full answer text after a prompt without options.
LETTER = "letter"
ANSWER = "answer"
SCORING_MODES = (LETTER, ANSWER)

# Length normalisations of the full-answer log-likelihood.
NORMALIZE_NONE = "none"
NORMALIZE_TOKEN = "token"
NORMALIZE_CHAR = "char"
NORMALIZATIONS = (NORMALIZE_NONE, NORMALIZE_TOKEN, NORMALIZE_CHAR)

LETTERS = "ABCDEFGHIJ"

# Languages written without spaces between words: an answer follows its
# prompt directly instead of after a space.
_NO_SPACE_LANGUAGES = ("zh", "ja", "th", "lo", "km", "my")


@dataclasses.dataclass(frozen=True)
class Question:
  """One question, ready to score.

  Attributes:
    language: language code of the text.
    subject: subject (MMLU) or question type (XCOPA).
    question_id: the same id in every language for parallel questions.
    context: the prompt before the answer.
    continuations: the text that follows `context` for each choice,
      separator included (for example " A" or " the answer").
    label: index of the correct choice.
  """

  language: str
  subject: str
  question_id: str
  context: str
  continuations: tuple[str, ...]
  label: int


def answer_separator(language: str) -> str:
  """Returns the text between a prompt and its answer: a space or nothing."""
  return "" if language.split("-")[0] in _NO_SPACE_LANGUAGES else " "
