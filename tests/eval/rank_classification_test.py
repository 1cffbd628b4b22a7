"""Tests for rank classification: tokenisation, prediction and summaries."""

import numpy as np
import pytest

from sutra_jax.eval import mmlu
from sutra_jax.eval import multiple_choice as mc
from sutra_jax.eval import rank_classification as rc
from sutra_jax.eval import xcopa


def _piece_ids(vocabulary, *pieces):
  return [vocabulary.tokenizer.piece_to_id(p) for p in pieces]


def test_letter_is_piece_after_prompt(hand_built_vocabulary):
  vocabulary = hand_built_vocabulary
  question = mc.Question("en", "test", "0", "Q? Answer:", (" A", " B"), 0)
  name = rc.register_task("letters", "en", [question], vocabulary, "val")
  examples = rc.task_examples(name, "val")

  # On its own, " A" is two pieces; after the prompt it is one.
  assert vocabulary.encode(" A") == _piece_ids(vocabulary, "▁", "▁A")
  assert [list(e["inputs"]) for e in examples] == [
      vocabulary.encode("Q? Answer:")] * 2
  assert [list(e["targets"]) for e in examples] == [
      _piece_ids(vocabulary, "▁A"), _piece_ids(vocabulary, "▁B")]


def test_scorer_sees_piece_after_prompt(hand_built_vocabulary):
  vocabulary = hand_built_vocabulary
  a, b, space, bare_a, bare_b = _piece_ids(vocabulary, "▁A", "▁B", "▁", "A",
                                           "B")
  # A token-level "model": `▁B` beats `▁A`, but a bare `A` would beat a bare
  # `B`, and `▁` alone is likely. Only scoring `▁A`/`▁B` predicts B.
  table = {a: -3.0, b: -1.0, space: -0.1, bare_a: 0.0, bare_b: -5.0}
  scorer = lambda examples: np.asarray(
      [sum(table[int(t)] for t in e["targets"]) for e in examples])
  question = mc.Question("en", "test", "0", "Q? Answer:", (" A", " B"), 0)
  report = rc.evaluate({"en": [question]}, "letters", vocabulary, "val",
                       scorer)
  assert report["predictions"][0]["predicted"] == 1


def _always_right(examples):
  return np.asarray([0.0 if e["is_correct"] else -1.0 for e in examples])


def _always_first(examples):
  return np.asarray([0.0 if e["choice_index"] == 0 else -1.0
                     for e in examples])


_SUBJECTS = ("anatomy", "astronomy", "virology")


def _mmlu_questions(shared_data, scoring):
  languages = mmlu.read_mmlu(str(shared_data / "mmlu_en"))
  splits = languages["en"]
  items = [i for i in splits["val"] if i.subject in _SUBJECTS]
  return items, mmlu.make_questions(items, splits["dev"], "en", 2, scoring)


@pytest.mark.parametrize("scoring", mc.SCORING_MODES)
def test_mmlu_harness_with_fake_models(shared_data, vocabulary, scoring):
  items, questions = _mmlu_questions(shared_data, scoring)
  right = rc.evaluate({"en": questions}, "mmlu", vocabulary, "val",
                      _always_right)
  first = rc.evaluate({"en": questions}, "mmlu", vocabulary, "val",
                      _always_first)

  assert right["per_language"]["en"] == {
      "accuracy": 1.0, "count": len(items),
      "per_subject": right["per_language"]["en"]["per_subject"]}
  assert set(right["per_subject"]) == set(_SUBJECTS)
  for subject in _SUBJECTS:
    subject_items = [i for i in items if i.subject == subject]
    share_a = np.mean([i.answer == 0 for i in subject_items])
    assert right["per_subject"][subject]["accuracy"] == 1.0
    assert first["per_subject"][subject]["count"] == len(subject_items)
    assert first["per_subject"][subject]["accuracy"] == pytest.approx(share_a)
  share_a = np.mean([i.answer == 0 for i in items])
  assert first["per_language"]["en"]["accuracy"] == pytest.approx(share_a)
  assert first["parallel"]["agreement"] is None


def test_xcopa_harness_with_fake_models(shared_data, vocabulary):
  split, files = xcopa.find_files(str(shared_data / "xcopa_val"), None)
  assert split == "val"
  assert sorted(files) == sorted(xcopa.LANGUAGES)
  chosen = {code: xcopa.read_file(files[code]) for code in ("it", "th", "zh")}
  questions = {code: xcopa.make_questions(items, code, 0, mc.ANSWER)
               for code, items in chosen.items()}
  right = rc.evaluate(questions, "xcopa", vocabulary, split, _always_right)
  first = rc.evaluate(questions, "xcopa", vocabulary, split, _always_first)

  for code, items in chosen.items():
    share_first = np.mean([item["label"] == 0 for item in items])
    assert right["per_language"][code]["accuracy"] == 1.0
    assert right["per_language"][code]["count"] == 100
    assert first["per_language"][code]["accuracy"] == pytest.approx(
        share_first)
  assert right["accuracy_std"] == 0.0
  # Always the first choice is the same answer in every language.
  assert first["parallel"] == {"agreement": 1.0, "questions": 100}
  # The right answers are the same choice because the items are parallel.
  assert right["parallel"] == {"agreement": 1.0, "questions": 100}


def _prediction(language, question_id, predicted, label, subject="s"):
  return {"language": language, "subject": subject,
          "question_id": question_id, "predicted": predicted, "label": label}


def test_summarize_accuracy_std_and_agreement():
  predictions = [
      _prediction("en", "1", 0, 0), _prediction("en", "2", 1, 1),
      _prediction("en", "3", 2, 0, subject="t"),
      _prediction("hi", "1", 0, 0), _prediction("hi", "2", 0, 1),
      _prediction("hi", "4", 3, 3),
  ]
  summary = rc.summarize(predictions)
  en, hi = summary["per_language"]["en"], summary["per_language"]["hi"]
  assert (en["accuracy"], en["count"]) == (pytest.approx(2 / 3), 3)
  assert en["per_subject"] == {"s": {"accuracy": 1.0, "count": 2},
                               "t": {"accuracy": 0.0, "count": 1}}
  assert (hi["accuracy"], hi["count"]) == (pytest.approx(2 / 3), 3)
  assert summary["macro_average"] == pytest.approx(2 / 3)
  assert summary["accuracy_std"] == pytest.approx(0.0)
  assert summary["per_subject"]["s"] == {"accuracy": 0.8, "count": 5}
  # Questions 1 and 2 are in both languages; only question 1 agrees.
  assert summary["parallel"] == {"agreement": 0.5, "questions": 2}


def test_summarize_std_is_population_std():
  predictions = [_prediction("en", "1", 0, 0), _prediction("hi", "1", 1, 0),
                 _prediction("ko", "1", 0, 0), _prediction("ko", "2", 0, 0)]
  summary = rc.summarize(predictions)
  assert summary["accuracy_std"] == pytest.approx(np.std([1.0, 0.0, 1.0]))
  assert summary["parallel"] == {"agreement": 0.0, "questions": 1}


def test_length_normalisations():
  examples = [{"targets": np.arange(4), "targets_chars": 10},
              {"targets": np.arange(1), "targets_chars": 2}]
  sums = np.asarray([-4.0, -3.0])
  np.testing.assert_allclose(
      rc.normalized_scores(examples, sums, mc.NORMALIZE_NONE), [-4.0, -3.0])
  np.testing.assert_allclose(
      rc.normalized_scores(examples, sums, mc.NORMALIZE_TOKEN), [-1.0, -3.0])
  np.testing.assert_allclose(
      rc.normalized_scores(examples, sums, mc.NORMALIZE_CHAR), [-0.4, -1.5])


def test_targets_chars_counts_characters(vocabulary):
  question = mc.Question("hi", "s", "0", "प्रश्न", (" उत्तर", " नहीं"), 1)
  name = rc.register_task("chars", "hi", [question], vocabulary, "val")
  examples = rc.task_examples(name, "val")
  assert [int(e["targets_chars"]) for e in examples] == [
      len(" उत्तर"), len(" नहीं")]
  assert all(len(e["targets"]) >= 1 for e in examples)
