"""Tests for the XCOPA reader and prompts."""

import json

import pytest

from sutra_jax.errors import DataError
from sutra_jax.eval import multiple_choice as mc
from sutra_jax.eval import xcopa


def _item(idx, label=0, question="cause", premise="L'uomo aprì il rubinetto."):
  return {"premise": premise, "choice1": "Il lavandino si riempì.",
          "choice2": "Acqua fluì.", "question": question, "label": label,
          "idx": idx, "changed": False}


def _write(path, items):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n"
                          for i in items), encoding="utf-8")
  return path


def test_answer_prompt_uses_connector():
  question = xcopa.make_questions([_item(0, question="effect")], "it", 0,
                                  mc.ANSWER)[0]
  assert question.context == "L'uomo aprì il rubinetto quindi"
  assert question.continuations == (" il lavandino si riempì.",
                                    " acqua fluì.")
  assert (question.subject, question.question_id) == ("effect", "0")


def test_chinese_prompt_has_no_spaces():
  item = dict(_item(3), premise="男人打开了水龙头。", choice1="马桶满了。",
              choice2="水流了出来。")
  question = xcopa.make_questions([item], "zh", 0, mc.ANSWER)[0]
  assert question.context == "男人打开了水龙头因为"
  assert question.continuations == ("马桶满了。", "水流了出来。")


def test_k_shot_uses_other_items():
  items = [_item(0, label=1), _item(1), _item(2)]
  questions = xcopa.make_questions(items, "it", 1, mc.LETTER)
  assert questions[0].context.count("Answer:") == 2
  assert questions[0].context.startswith(
      "L'uomo aprì il rubinetto.\nQuestion: what was the cause?\n")
  assert "Answer: A\n\n" in questions[0].context  # The shot is item 1.
  assert "Answer: B\n\n" in questions[1].context  # The shot is item 0.


def test_find_files_and_split(tmp_path):
  _write(tmp_path / "data" / "it" / "val.it.jsonl", [_item(0)])
  _write(tmp_path / "data" / "it" / "test.it.jsonl", [_item(0)])
  split, files = xcopa.find_files(str(tmp_path), None)
  assert (split, sorted(files)) == ("test", ["it"])
  with pytest.raises(DataError, match="splits found: test, val"):
    xcopa.find_files(str(tmp_path), "train")


def test_bad_label_names_line(tmp_path):
  path = _write(tmp_path / "val.it.jsonl", [_item(0), _item(1, label=2)])
  with pytest.raises(DataError, match=r"val.it.jsonl line 2: invalid label 2"):
    xcopa.read_file(path)


def test_missing_folder_raises(tmp_path):
  with pytest.raises(DataError, match="not found"):
    xcopa.find_files(str(tmp_path / "missing"), None)
