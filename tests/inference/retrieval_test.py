"""Tests for BM25 retrieval augmentation over local documents."""

import json
import os

import pytest

from sutra_jax.errors import DataError
from sutra_jax.inference import retrieval


def _documents(folder):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "geography.txt").write_text(
      "Rivers flow into the sea.\n\nThe capital of Zorbania is Quintaro, "
      "a city on the river Vell.\n", encoding="utf-8")
  (folder / "cooking.md").write_text("Bread needs flour, water and salt.\n",
                                     encoding="utf-8")
  (folder / "hindi.txt").write_text("भारत की राजधानी नई दिल्ली है।\n",
                                    encoding="utf-8")
  (folder / "wiki.jsonl").write_text(
      json.dumps({"title": "长城", "text": "长城位于中国北方，全长两万多公里。"},
                 ensure_ascii=False) + "\n" +
      json.dumps({"text": "The Moon orbits the Earth."}) + "\n",
      encoding="utf-8")
  return folder


def test_answer_only_in_document_reaches_prompt(tmp_path):
  retriever = retrieval.BM25Retriever(str(_documents(tmp_path / "docs")),
                                      cache_dir=str(tmp_path / "cache"))
  question = "What is the capital of Zorbania?"
  passages = retriever.retrieve(question, k=2)
  prompt = retrieval.augment_prompt(question, passages)

  assert passages[0].source == "geography.txt #2"
  assert "Quintaro" not in question
  assert prompt.startswith("[1] geography.txt #2: The capital of Zorbania "
                           "is Quintaro")
  assert prompt.endswith("\n\n" + question)


@pytest.mark.parametrize("query,source", [
    ("भारत की राजधानी क्या है?", "hindi.txt"),
    ("长城在哪里？", "wiki.jsonl: 长城"),
])
def test_non_latin_queries(tmp_path, query, source):
  retriever = retrieval.BM25Retriever(str(_documents(tmp_path / "docs")),
                                      cache_dir=str(tmp_path / "cache"))
  assert retriever.retrieve(query, k=1)[0].source == source


def test_tokenize_keeps_marks_and_splits_unspaced_scripts():
  assert retrieval.tokenize("हिन्दी भाषा") == ["हिन्दी", "भाषा"]
  assert retrieval.tokenize("北京大学 Café") == ["北京", "京大", "大学",
                                                 "café"]
  assert retrieval.tokenize("ภาษาไทย") == ["ภา", "าษ", "ษา", "าไ", "ไท",
                                           "ทย"]


def test_index_is_cached_and_rebuilt_on_change(tmp_path):
  docs = _documents(tmp_path / "docs")
  cache = str(tmp_path / "cache")
  first = retrieval.BM25Retriever(str(docs), cache_dir=cache)
  second = retrieval.BM25Retriever(str(docs), cache_dir=cache)
  assert not first.loaded_from_cache
  assert second.loaded_from_cache
  assert second.index_dir == first.index_dir
  assert second.retrieve("Zorbania", 1) == first.retrieve("Zorbania", 1)

  (docs / "moon.txt").write_text("Zorbania has two moons.", encoding="utf-8")
  third = retrieval.BM25Retriever(str(docs), cache_dir=cache)
  assert not third.loaded_from_cache
  assert len(os.listdir(cache)) == 2


def test_unrelated_query_returns_nothing(tmp_path):
  retriever = retrieval.BM25Retriever(str(_documents(tmp_path / "docs")),
                                      cache_dir=str(tmp_path / "cache"))
  assert retriever.retrieve("xylophone", 3) == []
  assert retrieval.augment_prompt("xylophone?", []) == "xylophone?"


def test_missing_directory_raises(tmp_path):
  with pytest.raises(DataError, match="retrieval directory not found"):
    retrieval.BM25Retriever(str(tmp_path / "missing"),
                            cache_dir=str(tmp_path / "cache"))


def test_empty_directory_raises(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.csv").write_text("a,b", encoding="utf-8")
  with pytest.raises(DataError, match="no documents with text"):
    retrieval.BM25Retriever(str(tmp_path / "empty"),
                            cache_dir=str(tmp_path / "cache"))
