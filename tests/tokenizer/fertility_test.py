"""Tests of the fertility report, merging, and NTREX round trips."""

import json

from PIL import Image
import pytest
import sentencepiece as spm

from sutra_jax.errors import DataError
from sutra_jax.tokenizer import fertility
from sutra_jax.tokenizer import merge
from sutra_jax.tokenizer import train

ENGLISH = ["The cat sat on the mat.", "Prices rose by 3 per cent."]
HINDI = ["बिल्ली चटाई पर बैठी।", "कीमतें 3 प्रतिशत बढ़ीं।"]
JAPANESE = ["猫がマットの上に座った。", "価格は3パーセント上昇した。"]


@pytest.fixture
def parallel_dir(tmp_path):
  for name, lines in [("newstest2019-src.eng.first2.txt", ENGLISH),
                      ("newstest2019-ref.hin.first2.txt", HINDI),
                      ("newstest2019-ref.jpn.first2.txt", JAPANESE)]:
    (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
  return tmp_path


@pytest.mark.parametrize("name, code", [
    ("newstest2019-src.eng.txt", "eng"),
    ("newstest2019-ref.hin.txt", "hin"),
    ("newstest2019-ref.hin.first1005.txt", "hin"),
    ("newstest2019-ref.zho-CN.first1005.txt", "zho-CN"),
    ("hi.txt", "hi"),
    ("README.md", None),
    ("notes.v2.txt", None),
])
def test_language_of_file(name, code):
  assert fertility.language_of_file(name) == code


def test_report_matches_direct_counts(parallel_dir, small_model):
  report = fertility.fertility_report(small_model, [], str(parallel_dir))
  assert set(report) == {"languages", "references"}
  assert list(report["languages"]) == ["eng", "hin", "jpn"]

  processor = spm.SentencePieceProcessor(model_file=small_model)
  tokens = {code: sum(len(processor.encode(line)) for line in lines)
            for code, lines in [("eng", ENGLISH), ("hin", HINDI),
                                ("jpn", JAPANESE)]}
  words = {"eng": 12, "hin": 8,
           "jpn": sum(len(line) for line in JAPANESE)}  # No spaces.
  characters = {"eng": sum(map(len, ENGLISH)), "hin": sum(map(len, HINDI)),
                "jpn": sum(map(len, JAPANESE))}
  for code, metrics in report["languages"].items():
    assert set(metrics) == set(fertility.METRICS)
    assert metrics["tokens_per_word"] == pytest.approx(
        tokens[code] / words[code])
    assert metrics["tokens_per_character"] == pytest.approx(
        tokens[code] / characters[code])
    assert metrics["ratio_to_english"] == pytest.approx(
        tokens[code] / tokens["eng"])


def test_references_and_chart(parallel_dir, small_model, shared_data,
                              tmp_path):
  references = shared_data / "reference_tokenizers"
  paths = [str(references / "o200k_base.tiktoken"),
           str(references / "mistral_7b_v0.1.tokenizer.model")]
  report = fertility.fertility_report(small_model, paths, str(parallel_dir))
  assert list(report["references"]) == ["o200k_base",
                                        "mistral_7b_v0.1.tokenizer"]
  o200k = fertility.load_tokenizer(paths[0])
  assert o200k.count(["hello world"]) == 2
  assert report["references"]["o200k_base"]["eng"]["ratio_to_english"] == 1
  chart = tmp_path / "chart.png"
  fertility.write_chart(report, str(chart))
  with Image.open(chart) as image:
    assert image.format == "PNG"
  table = fertility.format_table(report)
  assert "o200k_base" in table
  assert table.splitlines()[2].startswith("eng")


def test_tiktoken_encodings_match_known_ids(shared_data):
  references = shared_data / "reference_tokenizers"
  expected = {"cl100k_base.tiktoken": [15339, 1917],
              "o200k_base.tiktoken": [24912, 2375],
              "r50k_base_gpt2.tiktoken": [31373, 995]}
  for name, ids in expected.items():
    tokenizer = fertility.load_tokenizer(str(references / name))
    assert tokenizer._encode_batch(["hello world"]) == [ids], name  # pylint: disable=protected-access


def test_parallel_dir_errors(tmp_path):
  (tmp_path / "newstest2019-ref.hin.txt").write_text("a\nb\n")
  with pytest.raises(DataError, match="no English file"):
    fertility.read_parallel_dir(str(tmp_path))
  (tmp_path / "newstest2019-src.eng.txt").write_text("a\n")
  with pytest.raises(DataError, match="not parallel"):
    fertility.read_parallel_dir(str(tmp_path))
  with pytest.raises(DataError, match="not found"):
    fertility.read_parallel_dir(str(tmp_path / "none"))


def test_merge_keeps_base_ids(tmp_path, small_training_args):
  texts = small_training_args["texts_by_language"]
  base = train.train_sentencepiece(
      {"en": texts["en"]}, str(tmp_path / "base"), 400, model_type="bpe")
  added = train.train_sentencepiece(
      {"hi": texts["hi"], "en": texts["en"]}, str(tmp_path / "added"), 900,
      model_type="bpe", character_coverage=0.9995)
  id_map = merge.merge_models(base, added, str(tmp_path / "merged"))

  base_sp = spm.SentencePieceProcessor(model_file=base)
  added_sp = spm.SentencePieceProcessor(model_file=added)
  merged_sp = spm.SentencePieceProcessor(
      model_file=str(tmp_path / "merged.model"))
  assert id_map["base_vocab_size"] == base_sp.get_piece_size() == 400
  assert id_map["vocab_size"] == merged_sp.get_piece_size()
  assert id_map["new_pieces"] == id_map["vocab_size"] - 400 > 0
  for i in range(base_sp.get_piece_size()):
    assert merged_sp.id_to_piece(i) == base_sp.id_to_piece(i), i
  for added_id, merged_id in enumerate(id_map["added_to_merged"]):
    if merged_id >= 0:
      assert merged_sp.id_to_piece(merged_id) == added_sp.id_to_piece(
          added_id)
  with open(tmp_path / "merged.id_map.json", encoding="utf-8") as f:
    assert json.load(f) == id_map

  hindi = texts["hi"][:20]
  merged_count = sum(len(ids) for ids in merged_sp.encode(hindi))
  base_count = sum(len(ids) for ids in base_sp.encode(hindi))
  assert merged_count < base_count / 2
  assert merged_sp.decode(merged_sp.encode(hindi)) == hindi


def test_merge_limit_and_bad_model(tmp_path, small_model):
  (tmp_path / "bad.model").write_bytes(b"not a model")
  with pytest.raises(DataError, match="not a SentencePiece model"):
    merge.merge_models(str(tmp_path / "bad.model"), small_model,
                       str(tmp_path / "out"))
  id_map = merge.merge_models(small_model, small_model, str(tmp_path / "same"))
  assert id_map["new_pieces"] == 0
  assert id_map["added_to_merged"] == list(range(id_map["vocab_size"]))


def test_ntrex_round_trip_every_language(shared_data, tmp_path):
  texts = fertility.read_parallel_dir(
      str(shared_data / "ntrex128_dev_subset"))
  assert len(texts) == 35
  # 60 lines per language train a 6000-piece model in a few seconds; every
  # line of every language must still decode to itself.
  model = train.train_sentencepiece(
      {code: lines[:60] for code, lines in texts.items()},
      str(tmp_path / "ntrex"), 6000)
  processor = spm.SentencePieceProcessor(model_file=model)
  for code, lines in texts.items():
    decoded = processor.decode(processor.encode(lines))
    mismatches = [i for i, (a, b) in enumerate(zip(lines, decoded)) if a != b]
    assert not mismatches, (code, mismatches[:3])
