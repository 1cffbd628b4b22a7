"""A multi-turn conversation in the chat format used in training.

Each user message is appended to the history and the whole conversation,
ending with the assistant marker, is the prompt (see `sutra_jax.data.chat`).
The answer becomes the next assistant turn. When the prompt would exceed
`max_prompt_tokens`, the oldest user/assistant pairs are dropped.

With a retriever, the passages found for a message are prepended to that
message in the prompt; the history keeps the message without them.
"""

import dataclasses

from sutra_jax.data import chat
from sutra_jax.errors import ConfigError
from sutra_jax.inference import retrieval
from sutra_jax.inference import sampling as sampling_lib
from sutra_jax.inference import text_generation


@dataclasses.dataclass
class ChatSession:
  """The state of one conversation.

  Attributes:
    generator: decodes the answers.
    output_language: code of the answers' language.
    prompt_language: code of the user's language; None uses the output
      language.
    sampling: how answer tokens are chosen.
    max_new_tokens: the maximum length of one answer, in tokens.
    max_prompt_tokens: the maximum prompt length, in tokens.
    seed: seed of the first answer's sampling; each answer uses the next.
    retriever: finds passages for each message; None disables retrieval.
    retrieval_top_k: passages prepended to each message.
    history: earlier turns, user first, alternating roles.
  """

  generator: text_generation.TextGenerator
  output_language: str
  prompt_language: str | None = None
  sampling: sampling_lib.SamplingParams = sampling_lib.GREEDY
  max_new_tokens: int = 64
  max_prompt_tokens: int = 1024
  seed: int = 0
  retriever: retrieval.Retriever | None = None
  retrieval_top_k: int = 3
  history: list[str] = dataclasses.field(default_factory=list)

  def _prompt(self, user_text: str) -> str:
    """Formats the conversation, dropping the oldest pairs to fit."""
    if self.retriever is not None:
      user_text = retrieval.augment_prompt(
          user_text, self.retriever.retrieve(user_text, self.retrieval_top_k))
    while True:
      prompt = chat.format_prompt(user_text, self.history)
      if (self.generator.count_tokens(prompt) <= self.max_prompt_tokens or
          not self.history):
        return prompt
      self.history = self.history[2:]

  def reply(self, user_text: str) -> str:
    """Answers a user message and records both turns.

    Raises:
      ConfigError: the message contains a chat role marker.
    """
    try:
      prompt = self._prompt(user_text)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    request = text_generation.TextRequest(
        prompt=prompt, output_language=self.output_language,
        prompt_language=self.prompt_language, sampling=self.sampling)
    answer = self.generator.generate([request],
                                     max_new_tokens=self.max_new_tokens,
                                     seed=self.seed)[0]
    self.seed += 1
    # The training text has one space after a role marker, which the
    # answer's first piece carries.
    answer = answer.strip()
    self.history += [user_text, answer]
    return answer

  def reset(self) -> None:
    """Forgets the conversation."""
    self.history = []
