"""Per-language perplexity on held-out data.

Perplexity of a language is exp(sum of token negative log-likelihoods /
number of scored tokens), where a token is scored when its loss weight is
positive and it belongs to the language by `decoder_language_ids` (the
language of the predicted token). For the parallel lexicon only the target
side is scored.
"""

import math
from typing import Iterable, Mapping

from flax import nnx
import jax
import numpy as np

from sutra_jax import languages
from sutra_jax import progress
from sutra_jax.training import train_step as train_step_lib


@nnx.jit(static_argnames=("num_languages",))
def _loss_sums(model, batch, num_languages: int):
  """Returns per-language ([N] loss sum, [N] weight sum) of one batch."""
  output = train_step_lib.run_model(model, batch)
  metrics = train_step_lib.cross_entropy(
      output.logits, batch["decoder_target_tokens"],
      batch["decoder_loss_weights"], batch["decoder_language_ids"],
      num_languages)
  return metrics["language_loss_sum"], metrics["language_weight_sum"]


def per_language_perplexity(
    model, batches: Iterable[Mapping[str, np.ndarray]],
    table: languages.LanguageTable,
    batch_sharding: jax.sharding.NamedSharding | None = None,
) -> dict[str, dict[str, float]]:
  """Computes perplexity per language over all `batches`.

  Args:
    model: a SutraModel.
    batches: numpy batches with the features of
      `sutra_jax.data.pipeline.get_dataset`, all of one shape.
    table: the model's language table (maps ids to codes).
    batch_sharding: where to place each batch; None leaves it to JAX.

  Returns:
    `{code: {"perplexity", "loss", "tokens"}}` for every language with at
    least one scored token; `loss` is the mean negative log-likelihood in
    nats per token.
  """
  loss_sum = np.zeros(len(table), np.float64)
  weight_sum = np.zeros(len(table), np.float64)
  for batch in progress.track(batches, desc="perplexity", unit="batch"):
    if batch_sharding is not None:
      batch = jax.device_put(dict(batch), batch_sharding)
    losses, weights = _loss_sums(model, batch, num_languages=len(table))
    loss_sum += np.asarray(losses, np.float64)
    weight_sum += np.asarray(weights, np.float64)
  results = {}
  for language_id, code in enumerate(table.codes):
    if weight_sum[language_id] > 0:
      mean = loss_sum[language_id] / weight_sum[language_id]
      results[code] = {"perplexity": math.exp(mean), "loss": mean,
                       "tokens": float(weight_sum[language_id])}
  return results
