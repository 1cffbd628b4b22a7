"""A summary of a mixture: task rates and sizes, and a sample's token mix.

`inspect_mixture` reads a few batches through the training pipeline
(`sutra_jax.data.pipeline`), so the token counts include packing, truncation
and the mixture's sampling exactly as training sees them.
"""

import collections

import numpy as np
import seqio

from sutra_jax import languages
from sutra_jax.data import pipeline
from sutra_jax.data.feature_converter import packing_efficiency
from sutra_jax.errors import ConfigError


def resolve_name(name: str) -> str:
  """Returns the registered mixture or task `name` or `name.vocab_<key>`.

  Raises:
    ConfigError: no registered mixture or task has that name, or several
      vocabulary keys match.
  """
  registered = (list(seqio.MixtureRegistry.names()) +
                list(seqio.TaskRegistry.names()))
  if name in registered:
    return name
  matches = sorted(n for n in registered if n.startswith(name + ".vocab_"))
  if len(matches) == 1:
    return matches[0]
  if matches:
    raise ConfigError(f"{name!r} matches {', '.join(matches)}; pass the full "
                      "name")
  mixtures = sorted(seqio.MixtureRegistry.names())
  raise ConfigError(
      f"unknown mixture {name!r}: the gin files register "
      f"{', '.join(mixtures) or 'no mixture'}; pass --gin_file with the "
      "phase that defines it")


def task_table(name: str) -> dict[str, dict[str, float | int | None]]:
  """Returns `{task: {"rate", "examples"}}`; rates of a task alone are 1."""
  provider = seqio.get_mixture_or_task(name)
  if isinstance(provider, seqio.Mixture):
    rates = dict(provider.rate_per_task_name)
    total = sum(rates.values())
    rates = {task: rate / total for task, rate in rates.items()}
  else:
    rates = {name: 1.0}
  return {task: {"rate": rate,
                 "examples": seqio.get_mixture_or_task(task)
                             .num_input_examples("train")}
          for task, rate in rates.items()}


def sample_tokens(name: str, table: languages.LanguageTable, *,
                  batches: int, batch_size: int, sequence_length: int,
                  seed: int) -> dict:
  """Counts the tokens of each language in the first batches of a mixture.

  A token counts for the language of its `decoder_language_ids` entry;
  padding counts for none.

  Returns:
    `{"batches", "batch_size", "sequence_length", "tokens",
    "tokens_per_language": {code: count}, "packing_efficiency"}`, with the
    languages in table order.
  """
  ds = pipeline.get_dataset(
      name, split="train", sequence_length=sequence_length,
      batch_size=batch_size, language_table=table, shuffle=True, seed=seed,
      repeat=True).take(batches)
  counts = collections.Counter()
  segments = []
  for batch in pipeline.as_numpy_batches(ds):
    is_token = batch["decoder_segment_ids"] > 0
    ids, numbers = np.unique(batch["decoder_language_ids"][is_token],
                             return_counts=True)
    counts.update(dict(zip(ids.tolist(), numbers.tolist())))
    segments.append(batch["decoder_segment_ids"])
  per_language = {code: counts[i] for i, code in enumerate(table.codes)
                  if counts[i]}
  return {
      "batches": len(segments),
      "batch_size": batch_size,
      "sequence_length": sequence_length,
      "tokens": sum(per_language.values()),
      "tokens_per_language": per_language,
      "packing_efficiency": (packing_efficiency(np.concatenate(segments))
                             if segments else 0.0),
  }


def format_report(report: dict) -> str:
  """Formats an inspect report as aligned text."""
  lines = [f"mixture {report['mixture']}", "",
           f"{'task':<48} {'rate':>8} {'examples':>12}"]
  for task, row in report["tasks"].items():
    examples = "unknown" if row["examples"] is None else f"{row['examples']:,}"
    lines.append(f"{task:<48} {row['rate']:>8.4f} {examples:>12}")
  sample = report["sample"]
  total = max(sample["tokens"], 1)
  lines += ["", f"sample: {sample['batches']} batches of "
            f"{sample['batch_size']} x {sample['sequence_length']} tokens, "
            f"packing efficiency {sample['packing_efficiency']:.3f}",
            f"{'language':<12} {'tokens':>10} {'share':>7}"]
  for code, count in sample["tokens_per_language"].items():
    lines.append(f"{code:<12} {count:>10,} {count / total:>7.3f}")
  return "\n".join(lines)
