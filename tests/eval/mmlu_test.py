"""Tests for the MMLU readers and prompts."""

import pytest

from sutra_jax.errors import DataError
from sutra_jax.eval import mmlu
from sutra_jax.eval import multiple_choice as mc


def _write(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding="utf-8")
  return path


def _standard_folder(root):
  _write(root / "dev" / "anatomy_dev.csv",
         'What is bone?,"A, tissue",An organ,A cell,A gas,A\n'
         "Where is the heart?,Chest,Foot,Hand,Ear,A\n")
  _write(root / "val" / "anatomy_val.csv",
         "Which is a muscle?,Biceps,Femur,Skull,Rib,A\n"
         '"Multi\nline",w,x,y,z,C\n')
  _write(root / "val" / "virology_val.csv", "What is a virus?,a,b,c,d,D\n")
  return root


def test_standard_layout(tmp_path):
  languages = mmlu.read_mmlu(str(_standard_folder(tmp_path / "mmlu_hi")))
  assert list(languages) == ["hi"]
  splits = languages["hi"]
  assert [i.answer for i in splits["val"]] == [0, 2, 3]
  assert [(i.subject, i.index) for i in splits["val"]] == [
      ("anatomy", 0), ("anatomy", 1), ("virology", 0)]
  assert splits["val"][1].question == "Multi\nline"
  assert splits["dev"][0].choices == ("A, tissue", "An organ", "A cell",
                                      "A gas")
  assert mmlu.choose_split(languages, None) == "val"


def test_translated_layout_with_header(tmp_path):
  header = ",Question,A,B,C,D,Answer,Subject\n"
  _write(tmp_path / "hi" / "test.csv",
         header + "0,प्रश्न एक,क,ख,ग,घ,B,anatomy\n"
         "1,प्रश्न दो,क,ख,ग,घ,D,anatomy\n2,तीन,क,ख,ग,घ,A,virology\n")
  _write(tmp_path / "hi" / "dev.csv", header + "0,उदाहरण,क,ख,ग,घ,C,anatomy\n")
  _write(tmp_path / "en" / "test.csv",
         header + "0,One,a,b,c,d,B,anatomy\n1,Two,a,b,c,d,D,anatomy\n"
         "2,Three,a,b,c,d,A,virology\n")
  languages = mmlu.read_mmlu(str(tmp_path))
  assert sorted(languages) == ["en", "hi"]
  test = languages["hi"]["test"]
  assert [(i.subject, i.index, i.answer) for i in test] == [
      ("anatomy", 0, 1), ("anatomy", 1, 3), ("virology", 0, 0)]
  assert languages["hi"]["dev"][0].question == "उदाहरण"
  assert "dev" not in languages["en"]
  assert mmlu.choose_split(languages, None) == "test"


def test_flat_translated_files(tmp_path):
  header = "Question,A,B,C,D,Answer,Subject\n"
  _write(tmp_path / "mmlu_HI_IN.csv", header + "प्रश्न,क,ख,ग,घ,C,law\n")
  _write(tmp_path / "mmlu_ZH_CN.csv", header + "问题,甲,乙,丙,丁,A,law\n")
  languages = mmlu.read_mmlu(str(tmp_path))
  assert sorted(languages) == ["hi", "zh"]
  assert languages["zh"]["test"][0].choices == ("甲", "乙", "丙", "丁")


def test_wrong_answer_letter_names_file_and_row(tmp_path):
  root = _standard_folder(tmp_path / "mmlu_en")
  _write(root / "val" / "virology_val.csv",
         "What is a virus?,a,b,c,d,D\nWhat is RNA?,a,b,c,d,E\n")
  with pytest.raises(DataError) as error:
    mmlu.read_mmlu(str(root))
  message = str(error.value)
  assert "\n" not in message
  assert "virology_val.csv row 2: invalid answer 'E'" in message
  assert "expected one of A, B, C, D" in message


def test_wrong_column_count_raises(tmp_path):
  _write(tmp_path / "mmlu_en" / "val" / "law_val.csv", "Q,a,b,c,A\n")
  with pytest.raises(DataError, match="law_val.csv row 1: expected 6 columns"):
    mmlu.read_mmlu(str(tmp_path / "mmlu_en"))


def test_empty_folder_raises(tmp_path):
  with pytest.raises(DataError, match="no MMLU CSV files"):
    mmlu.read_mmlu(str(tmp_path))


def test_missing_split_raises(tmp_path):
  languages = mmlu.read_mmlu(str(_standard_folder(tmp_path / "mmlu_en")))
  with pytest.raises(DataError, match="no 'test' questions"):
    mmlu.choose_split(languages, "test")


def test_k_shot_prompt_uses_dev_of_subject(tmp_path):
  splits = mmlu.read_mmlu(str(_standard_folder(tmp_path / "mmlu_en")))["en"]
  questions = mmlu.make_questions(splits["val"], splits["dev"], "en", 1,
                                  mc.LETTER)
  first = questions[0]
  assert first.context == (
      "The following are multiple choice questions (with answers) about "
      "anatomy.\n\nWhat is bone?\nA. A, tissue\nB. An organ\nC. A cell\n"
      "D. A gas\nAnswer: A\n\nWhich is a muscle?\nA. Biceps\nB. Femur\n"
      "C. Skull\nD. Rib\nAnswer:")
  assert first.continuations == (" A", " B", " C", " D")
  assert (first.question_id, first.label) == ("anatomy/0", 0)
  # Virology has no dev questions, so its prompt has no shots.
  assert "What is bone?" not in questions[2].context


def test_answer_prompt_continues_with_option_text(tmp_path):
  splits = mmlu.read_mmlu(str(_standard_folder(tmp_path / "mmlu_en")))["en"]
  question = mmlu.make_questions(splits["val"], splits["dev"], "en", 1,
                                 mc.ANSWER)[0]
  assert question.context.endswith(
      "What is bone?\nAnswer: A, tissue\n\nWhich is a muscle?\nAnswer:")
  assert question.continuations == (" Biceps", " Femur", " Skull", " Rib")


def test_shots_without_dev_split_raise(tmp_path):
  _write(tmp_path / "mmlu_en" / "val" / "law_val.csv", "Q,a,b,c,d,A\n")
  splits = mmlu.read_mmlu(str(tmp_path / "mmlu_en"))["en"]
  with pytest.raises(DataError, match="--num_shots=0"):
    mmlu.make_questions(splits["val"], [], "en", 5, mc.LETTER)


def test_shared_mmlu_counts(shared_data):
  splits = mmlu.read_mmlu(str(shared_data / "mmlu_en"))["en"]
  assert len(splits["dev"]) == 285
  assert len(splits["val"]) == 1542
  assert len({i.subject for i in splits["val"]}) == 57
