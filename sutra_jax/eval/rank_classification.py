"""Rank classification of multiple-choice questions through seqio tasks.

Each language of a benchmark becomes one seqio Task. Its source yields one
example per question (the prompt, the continuation of each choice and the
label). Its preprocessors expand a question into one example per choice and
tokenise it. A scorer then gives each (prompt, continuation) pair a
log-likelihood, and the prediction is the choice with the highest score.

Tokenisation: the prompt and the continuation are tokenised together and
split where their tokens stop matching the tokens of the prompt alone. A
continuation " A" after "Answer:" is therefore scored as the piece that
follows the prompt in running text (for example `▁A`), not as the pieces of
" A" tokenised on its own. When the last prompt piece merges with the
continuation, the merged piece is scored.

Scores: `none` uses the summed log-likelihood of the continuation tokens,
`token` divides it by their number and `char` by the number of characters
of the continuation.
"""

import collections
import hashlib
import math
from typing import Callable, Iterable, Sequence

from absl import logging
import numpy as np
import seqio
import tensorflow as tf

from sutra_jax.data import tasks
from sutra_jax.errors import ConfigError
from sutra_jax.eval import multiple_choice as mc

# A scorer maps tokenised examples (numpy dicts with `inputs`, `targets`,
# `targets_language` and the rank-classification features) to the summed
# log-likelihood of each example's `targets`.
Scorer = Callable[[Sequence[dict]], np.ndarray]


# --- seqio task -------------------------------------------------------------


def _questions_source(questions: Sequence[mc.Question],
                      split: str) -> seqio.DataSource:
  # Every question of a task has the same number of choices, so `choices`
  # is a dense [questions, choices] string tensor.

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed  # One split, read in order.
    return tf.data.Dataset.from_tensor_slices({
        "inputs": tf.constant([q.context for q in questions], tf.string),
        "choices": tf.constant([list(q.continuations) for q in questions],
                               tf.string),
        "label": tf.constant([q.label for q in questions], tf.int32),
        "subject": tf.constant([q.subject for q in questions], tf.string),
        "question_id": tf.constant([q.question_id for q in questions],
                                   tf.string),
    })

  return seqio.FunctionDataSource(dataset_fn, splits=[split],
                                  num_input_examples={split: len(questions)})


def expand_choices(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Turns each question into one example per choice (rank classification).

  Each output example has `inputs` (the prompt), `targets` (the choice's
  continuation), `choice_index`, `is_correct`, and the question's `label`,
  `subject` and `question_id`.
  """

  def expand(example):
    choices = example["choices"]
    count = tf.shape(choices)[0]
    indices = tf.range(count, dtype=tf.int32)
    repeat = lambda value: tf.repeat(value[None], count, axis=0)
    return tf.data.Dataset.from_tensor_slices({
        "inputs": repeat(example["inputs"]),
        "targets": choices,
        "choice_index": indices,
        "is_correct": tf.equal(indices, example["label"]),
        "label": repeat(example["label"]),
        "subject": repeat(example["subject"]),
        "question_id": repeat(example["question_id"]),
    })

  return dataset.flat_map(expand)


def tokenize_continuation(dataset: tf.data.Dataset,
                          output_features) -> tf.data.Dataset:
  """Tokenises prompt + continuation together and splits the ids.

  `inputs` becomes the ids that the joint tokenisation shares with the
  prompt's own tokenisation, and `targets` the rest (at least one id).
  `targets_chars` is the number of characters of the continuation.
  """
  vocabulary = output_features["targets"].vocabulary

  def tokenize(example):
    prompt = vocabulary.encode_tf(example["inputs"])
    full = vocabulary.encode_tf(
        tf.strings.join([example["inputs"], example["targets"]]))
    shared = tf.minimum(tf.size(prompt), tf.size(full))
    same = tf.cast(tf.equal(prompt[:shared], full[:shared]), tf.int32)
    common = tf.reduce_sum(tf.math.cumprod(same))
    common = tf.minimum(common, tf.size(full) - 1)
    return {
        **example,
        "inputs": full[:common],
        "targets": full[common:],
        "targets_chars": tf.strings.length(example["targets"],
                                           unit="UTF8_CHAR"),
    }

  return dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)


def register_task(benchmark: str, language: str,
                  questions: Sequence[mc.Question],
                  vocabulary: seqio.Vocabulary, split: str) -> str:
  """Registers the questions of one language as a seqio Task.

  The name is `<benchmark>_<language>.<key>.vocab_<vocabulary key>`, where
  the key is a hash of the prompts, so tasks of different prompts coexist.

  Returns:
    The task name.
  """
  digest = hashlib.sha256()
  for question in questions:
    digest.update(question.context.encode("utf-8"))
    digest.update("\x00".join(question.continuations).encode("utf-8"))
  name = (f"{benchmark}_{language.replace('-', '_')}."
          f"{digest.hexdigest()[:8]}.vocab_{tasks.vocabulary_key(vocabulary)}")
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=_questions_source(questions, split),
      output_features={
          "inputs": seqio.Feature(vocabulary, add_eos=False),
          "targets": seqio.Feature(vocabulary, add_eos=False),
      },
      preprocessors=[
          expand_choices,
          tokenize_continuation,
          lambda ds: tasks.add_language_features(ds, language, language),
      ])
  return name


def task_examples(name: str, split: str) -> list[dict]:
  """Returns the tokenised rank-classification examples of a task, in order."""
  dataset = seqio.get_mixture_or_task(name).get_dataset(
      sequence_length=None, split=split, shuffle=False, num_epochs=1,
      use_cached=False)
  return list(dataset.as_numpy_iterator())


# --- prediction and summary -------------------------------------------------


def normalized_scores(examples: Sequence[dict], log_likelihoods: np.ndarray,
                      normalization: str) -> np.ndarray:
  """Applies a length normalisation to summed log-likelihoods.

  Raises:
    ConfigError: an unknown normalisation.
  """
  if normalization == mc.NORMALIZE_NONE:
    return np.asarray(log_likelihoods, np.float64)
  if normalization == mc.NORMALIZE_TOKEN:
    lengths = [len(e["targets"]) for e in examples]
  elif normalization == mc.NORMALIZE_CHAR:
    lengths = [e["targets_chars"] for e in examples]
  else:
    raise ConfigError(f"invalid normalization {normalization!r}: expected "
                      f"one of {', '.join(mc.NORMALIZATIONS)}")
  return np.asarray(log_likelihoods, np.float64) / np.maximum(
      np.asarray(lengths, np.float64), 1)


def predict(examples: Sequence[dict], scores: np.ndarray) -> list[dict]:
  """Picks the best-scoring choice of each question.

  Ties go to the lowest choice index.

  Returns:
    One `{"language", "subject", "question_id", "predicted", "label"}` per
    question, in order of first appearance.
  """
  best: dict[tuple, dict] = {}
  for example, score in zip(examples, scores):
    key = (_text(example["targets_language"]), _text(example["question_id"]))
    entry = best.setdefault(key, {
        "language": key[0], "subject": _text(example["subject"]),
        "question_id": key[1], "label": int(example["label"]),
        "predicted": None, "score": -math.inf})
    if score > entry["score"]:
      entry["score"] = float(score)
      entry["predicted"] = int(example["choice_index"])
  return [{k: v for k, v in entry.items() if k != "score"}
          for entry in best.values()]


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _accuracy(entries: Iterable[dict]) -> dict:
  entries = list(entries)
  correct = sum(e["predicted"] == e["label"] for e in entries)
  return {"accuracy": correct / len(entries) if entries else 0.0,
          "count": len(entries)}


def parallel_agreement(predictions: Sequence[dict]) -> dict:
  """Measures how often parallel questions get the same answer everywhere.

  A question is parallel when its id occurs in every language.

  Returns:
    `{"agreement": share of parallel questions whose predicted choice is the
    same in every language, or None with fewer than two languages or no
    parallel question; "questions": the number of parallel questions, 0
    with fewer than two languages}`.
  """
  by_id: dict[str, dict[str, int]] = collections.defaultdict(dict)
  languages = {p["language"] for p in predictions}
  for p in predictions:
    by_id[p["question_id"]][p["language"]] = p["predicted"]
  if len(languages) < 2:
    return {"agreement": None, "questions": 0}
  parallel = [answers for answers in by_id.values()
              if set(answers) == languages]
  if not parallel:
    return {"agreement": None, "questions": 0}
  same = sum(len(set(answers.values())) == 1 for answers in parallel)
  return {"agreement": same / len(parallel), "questions": len(parallel)}


def summarize(predictions: Sequence[dict]) -> dict:
  """Aggregates per-question predictions.

  Returns:
    `per_language` (accuracy, count and `per_subject` of each language),
    `per_subject` (pooled over languages), `macro_average` (the mean of the
    per-language accuracies), `accuracy_std` (their population standard
    deviation) and `parallel` (see `parallel_agreement`).
  """
  by_language = collections.defaultdict(list)
  by_subject = collections.defaultdict(list)
  for p in predictions:
    by_language[p["language"]].append(p)
    by_subject[p["subject"]].append(p)
  per_language = {}
  for code in sorted(by_language):
    subjects = collections.defaultdict(list)
    for p in by_language[code]:
      subjects[p["subject"]].append(p)
    per_language[code] = dict(
        _accuracy(by_language[code]),
        per_subject={s: _accuracy(subjects[s]) for s in sorted(subjects)})
  accuracies = [r["accuracy"] for r in per_language.values()]
  return {
      "per_language": per_language,
      "per_subject": {s: _accuracy(by_subject[s]) for s in sorted(by_subject)},
      "macro_average": float(np.mean(accuracies)) if accuracies else 0.0,
      "accuracy_std": float(np.std(accuracies)) if accuracies else 0.0,
      "parallel": parallel_agreement(predictions),
  }


def evaluate(questions_by_language: dict[str, Sequence[mc.Question]],
             benchmark: str, vocabulary: seqio.Vocabulary, split: str,
             scorer: Scorer, normalization: str = mc.NORMALIZE_NONE) -> dict:
  """Scores every question of every language and summarises the results.

  Args:
    questions_by_language: `{language code: questions}`.
    benchmark: name prefix of the registered tasks, such as `mmlu`.
    vocabulary: the model's vocabulary.
    split: the split name given to the tasks.
    scorer: computes summed continuation log-likelihoods.
    normalization: `none`, `token` or `char`.

  Returns:
    The `summarize` dict plus `tasks` (the seqio task names) and
    `predictions` (one dict per question).
  """
  examples, names = [], []
  for code, questions in sorted(questions_by_language.items()):
    if not questions:
      continue
    name = register_task(benchmark, code, questions, vocabulary, split)
    names.append(name)
    examples.extend(task_examples(name, split))
    logging.info("Task %s: %d questions, %d choices to score", name,
                 len(questions), len(examples))
  scores = normalized_scores(examples, scorer(examples), normalization)
  predictions = predict(examples, scores)
  return dict(summarize(predictions), tasks=names, predictions=predictions)
