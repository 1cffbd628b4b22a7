"""Tests for the mmlu/xcopa command logic: options, questions and tables."""

import pytest

from sutra_jax.errors import ConfigError
from sutra_jax.eval import benchmarks
from sutra_jax.eval import rank_classification as rc


def test_defaults_per_benchmark():
  mmlu = benchmarks.Options().resolved("mmlu")
  xcopa = benchmarks.Options().resolved("xcopa")
  assert (mmlu.num_shots, mmlu.scoring) == (5, "letter")
  assert (xcopa.num_shots, xcopa.scoring) == (0, "answer")


@pytest.mark.parametrize("options,expected", [
    (benchmarks.Options(scoring="word"), "invalid --scoring 'word'"),
    (benchmarks.Options(normalization="byte"), "invalid --normalization"),
    (benchmarks.Options(num_shots=-1), "invalid --num_shots -1"),
])
def test_invalid_options_raise(options, expected):
  with pytest.raises(ConfigError, match=expected):
    options.resolved("mmlu")


def test_load_questions_limits(shared_data):
  options = benchmarks.Options(max_questions=2).resolved("mmlu")
  split, questions = benchmarks.load_questions(
      "mmlu", str(shared_data / "mmlu_en"), options)
  assert split == "val"
  assert len(questions["en"]) == 2 * 57
  assert questions["en"][0].context.count("\nAnswer:") == 6  # 5 shots.

  options = benchmarks.Options(max_questions=3).resolved("xcopa")
  split, questions = benchmarks.load_questions(
      "xcopa", str(shared_data / "xcopa_val"), options)
  assert len(questions) == 11
  assert all(len(q) == 3 for q in questions.values())


def test_format_report_table():
  predictions = [
      {"language": "it", "subject": "cause", "question_id": "1",
       "predicted": 0, "label": 0},
      {"language": "sw", "subject": "cause", "question_id": "1",
       "predicted": 1, "label": 0},
  ]
  report = dict(rc.summarize(predictions), benchmark="xcopa",
                checkpoint_dir="run", step=7, data="data", split="val",
                num_shots=0, scoring="answer", normalization="none",
                routed_languages={"sw": "en"})
  lines = benchmarks.format_report(report).splitlines()
  assert lines[0] == ("run step 7: xcopa val from data, 0-shot, answer "
                      "scoring, normalization none")
  assert lines[3].split() == ["it", "100.0", "1"]
  assert lines[4].split() == ["sw", "0.0", "1", "en"]
  assert lines[-3].split()[-2:] == ["50.0", "%"]
  assert lines[-1] == ("same answer in every language 0.0 % of 1 parallel "
                       "questions")
