"""Next-token choice per row: greedy, temperature, top-k and top-p sampling.

Every row of a batch has its own settings, so one decoding batch can mix
greedy and sampled requests. A row with temperature 0 takes the argmax.
Otherwise its logits are divided by the temperature and cut to the `top_k`
most probable tokens (0 keeps all). They are then cut to the smallest set of
most probable tokens whose probability reaches `top_p` (nucleus sampling,
where 1.0 keeps all), and a token is drawn from what is left.
"""

import dataclasses

import jax
import jax.numpy as jnp

from sutra_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Next-token settings of one request.

  Attributes:
    temperature: divides the logits; 0 means greedy (argmax).
    top_k: keep only the k most probable tokens; 0 keeps all.
    top_p: keep the smallest set of most probable tokens whose total
      probability is at least top_p, in (0, 1].
  """

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature >= 0:
      raise ConfigError(f"invalid temperature {self.temperature!r}: expected "
                        "a number >= 0 (0 decodes greedily)")
    if not isinstance(self.top_k, int) or self.top_k < 0:
      raise ConfigError(f"invalid top_k {self.top_k!r}: expected an integer "
                        ">= 0 (0 keeps every token)")
    if not 0 < self.top_p <= 1:
      raise ConfigError(f"invalid top_p {self.top_p!r}: expected a number in "
                        "(0, 1] (1 keeps every token)")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


GREEDY = SamplingParams()


def _filtered_logits(logits, temperature, top_k, top_p):
  """Applies temperature, top-k and top-p to [B, V] logits.

  Tokens tied with the last kept one are kept too, so a row may keep more
  than top_k tokens when logits are equal.
  """
  vocab_size = logits.shape[-1]
  scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
  descending = -jnp.sort(-scaled, axis=-1)
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab_size), vocab_size)
  ranks = jnp.arange(vocab_size)[None, :]
  in_top_k = ranks < k[:, None]
  top_k_logits = jnp.where(in_top_k, descending, -jnp.inf)
  sorted_probs = jax.nn.softmax(top_k_logits, axis=-1)
  # A token is kept if the tokens ranked above it sum to less than top_p; the
  # most probable token is always kept.
  mass_above = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  kept = in_top_k & (mass_above < top_p[:, None])
  num_kept = jnp.maximum(jnp.sum(kept, axis=-1), 1)
  threshold = jnp.take_along_axis(descending, (num_kept - 1)[:, None],
                                  axis=-1)
  return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def choose_tokens(logits: jax.Array, rng: jax.Array, temperature: jax.Array,
                  top_k: jax.Array, top_p: jax.Array,
                  any_sampled: bool = True) -> jax.Array:
  """Chooses one token per row.

  Args:
    logits: [B, V] float32 next-token logits.
    rng: a PRNG key for this step.
    temperature: [B] float32; 0 selects greedy decoding for the row.
    top_k: [B] int32; 0 keeps every token.
    top_p: [B] float32 in (0, 1].
    any_sampled: False when every row is greedy; this skips the sort of the
      vocabulary that sampling needs.

  Returns:
    [B] int32 token ids.
  """
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if not any_sampled:
    return greedy
  filtered = _filtered_logits(logits, temperature, top_k, top_p)
  sampled = jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)
  return jnp.where(temperature > 0, sampled, greedy)
