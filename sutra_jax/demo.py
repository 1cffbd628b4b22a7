r"""The end-to-end demo behind `make demo`.

Trains a tokenizer on the embedded corpus, trains the tiny model through the
three phases, evaluates per-language perplexity on the held-out slices,
decodes a few prompts, and writes `<run_dir>/report.json`:

  python -m sutra_jax.demo --run_dir=runs/demo

Every step is resumable: an existing tokenizer is reused, a finished phase is
skipped, and an interrupted phase resumes from its latest checkpoint.
"""

import os
import sys
from typing import Sequence

from absl import flags
from absl import logging
import gin

from sutra_jax import gin_utils
from sutra_jax import report as report_lib
from sutra_jax.cli import common
from sutra_jax.data import chat
from sutra_jax.data import corpus
from sutra_jax.data import pipeline
from sutra_jax.errors import ConfigError
from sutra_jax.inference import generate
from sutra_jax.inference import loading
from sutra_jax.eval import perplexity
from sutra_jax.tokenizer import train as tokenizer_train
from sutra_jax.training import trainer

PHASES = ("concept", "language", "alignment")
# (prompt language, output language) of the decoded samples; the last one is
# a Hindi prompt answered by the English decoder blocks.
SAMPLE_LANGUAGES = (("ko", "ko"), ("hi", "hi"), ("en", "en"), ("hi", "en"))

_RUN_DIR = flags.DEFINE_string("run_dir", "runs/demo",
                               "Folder for the tokenizer, the three phase "
                               "run directories and report.json.")
_VOCAB_SIZE = flags.DEFINE_integer(
    "vocab_size", 8000, "SentencePiece vocabulary size. The corpus has about "
    "3,760 distinct characters, so sizes below about 4000 are rejected.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 24,
                                       "Maximum tokens generated per sample.")
_MIN_NEW_TOKENS = flags.DEFINE_integer(
    "min_new_tokens", 4, "Tokens generated per sample before the end of the "
    "turn may be chosen; the tiny model otherwise often ends at once.")
common.define_gin_flags()


def train_tokenizer(run_dir: str, vocab_size: int) -> str:
  """Trains the demo tokenizer unless `run_dir/spm.model` exists."""
  prefix = os.path.join(run_dir, "spm")
  model_path = prefix + ".model"
  if os.path.isfile(model_path):
    logging.info("Reusing the tokenizer %s", model_path)
    return model_path
  logging.info("Training a %d-piece SentencePiece tokenizer", vocab_size)
  return tokenizer_train.train_sentencepiece(
      corpus.demo_texts_by_language("train"), prefix, vocab_size)


def phase_bindings(run_dir: str, vocabulary: str) -> list[str]:
  """Binds the demo gin macros to folders under `run_dir`."""
  return [
      f"VOCABULARY = '{vocabulary}'",
      f"CONCEPT_RUN_DIR = '{os.path.join(run_dir, 'concept')}'",
      f"LANGUAGE_RUN_DIR = '{os.path.join(run_dir, 'language')}'",
  ]


def train_phases(run_dir: str, vocabulary: str,
                 extra_files: Sequence[str],
                 extra_bindings: Sequence[str]) -> list[dict]:
  """Runs the three phases in order and returns their report entries."""
  entries = []
  for name in PHASES:
    gin.clear_config()
    gin_utils.parse_config(
        ["runs/demo.gin", f"phases/{name}.gin", *extra_files],
        phase_bindings(run_dir, vocabulary) + list(extra_bindings))
    logging.info("Phase %s", name)
    result = trainer.train(os.path.join(run_dir, name))
    entries.append({
        "name": name,
        "steps": result.steps,
        "first_loss": result.first_loss,
        "final_loss": result.final_loss,
        "per_language_loss": result.per_language_loss,
    })
  return entries


def evaluate(run: loading.LoadedRun) -> dict[str, float]:
  """Returns held-out perplexity per language of the loaded run."""
  phase = run.phase
  dataset = pipeline.get_dataset(
      phase.mixture, split="validation",
      sequence_length=phase.sequence_length, batch_size=phase.batch_size,
      language_table=run.language_table, shuffle=False, seed=0,
      repeat=False)
  results = perplexity.per_language_perplexity(
      run.model, pipeline.as_numpy_batches(dataset), run.language_table)
  return {code: r["perplexity"] for code, r in results.items()}


def decode_samples(run: loading.LoadedRun, max_new_tokens: int,
                   min_new_tokens: int) -> list[dict]:
  """Generates greedy replies to the first held-out user turn of a few languages."""
  vocabulary = run.vocabulary
  table = run.language_table
  requests, prompts = [], []
  for prompt_language, output_language in SAMPLE_LANGUAGES:
    user_text = corpus.conversation_turns(prompt_language, "validation")[0][0]
    prompts.append(user_text)
    requests.append(generate.Request(
        prompt_ids=vocabulary.encode(chat.format_prompt(user_text)),
        prompt_language_id=table.id(prompt_language),
        output_language_id=table.id(output_language)))
  stop_ids = chat.stop_token_ids(vocabulary)
  outputs = generate.greedy_generate(run.model, requests,
                                     max_new_tokens=max_new_tokens,
                                     stop_ids=stop_ids,
                                     min_new_tokens=min_new_tokens)
  samples = []
  for (prompt_language, output_language), prompt, ids in zip(
      SAMPLE_LANGUAGES, prompts, outputs):
    samples.append({"language": output_language,
                    "prompt_language": prompt_language,
                    "prompt": prompt,
                    "output": vocabulary.decode(ids)})
  return samples


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {' '.join(argv[1:])!r}; pass "
                      "settings as flags or --gin_bindings")
  run_dir = _RUN_DIR.value
  os.makedirs(run_dir, exist_ok=True)
  vocabulary = train_tokenizer(run_dir, _VOCAB_SIZE.value)
  phases = train_phases(run_dir, vocabulary, flags.FLAGS.gin_file,
                        flags.FLAGS.gin_bindings)

  run = loading.load_run(os.path.join(run_dir, PHASES[-1]))
  report = {
      "phases": phases,
      "eval": {"per_language_perplexity": evaluate(run)},
      "samples": decode_samples(run, _MAX_NEW_TOKENS.value,
                                _MIN_NEW_TOKENS.value),
      "tokenizer": {
          "vocab_size": run.vocabulary.vocab_size,
          "tokens_per_word": tokenizer_train.tokens_per_word(
              vocabulary, corpus.demo_texts_by_language("validation")),
      },
  }
  path = os.path.join(run_dir, "report.json")
  report_lib.write_json_atomically(path, report)
  print(report_lib.format_report(report))
  print(f"\nWrote {path}")
  sys.stdout.flush()
  return 0


def run() -> None:
  common.run_main(main)


if __name__ == "__main__":
  run()
