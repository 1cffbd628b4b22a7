"""Tests of the text, JSONL and TFRecord sources and their tasks."""

import json

from absl import logging
import pytest
import seqio
import tensorflow as tf

from sutra_jax import languages
from sutra_jax.data import file_sources
from sutra_jax.data import sources
from sutra_jax.errors import ConfigError
from sutra_jax.errors import DataError

LENGTHS = {"inputs": 32, "targets": 32}
INVALID = b"caf\xe9 au lait\n"  # Latin-1, not UTF-8.


def _write(path, data: bytes):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return path


def _texts(task_name, vocabulary, split="train"):
  """Decodes every example of a task, in file order (no shuffling)."""
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(LENGTHS, split=split, shuffle=False)
  return [(vocabulary.decode(ex["inputs"][:-1].tolist()) if ex["inputs"].size
           else "", vocabulary.decode(ex["targets"][:-1].tolist()),
           ex["inputs_language"].decode(), ex["targets_language"].decode())
          for ex in ds.as_numpy_iterator()]


def _example(**values):
  feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
             for k, v in values.items()}
  return tf.train.Example(
      features=tf.train.Features(feature=feature)).SerializeToString()


def _write_tfrecord(path, records):
  path.parent.mkdir(parents=True, exist_ok=True)
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in records:
      writer.write(record)
  return path


@pytest.fixture
def warnings(monkeypatch):
  messages = []
  monkeypatch.setattr(logging, "warning",
                      lambda msg, *args: messages.append(msg % args))
  return messages


def test_text_folder_one_task_per_language(tmp_path, vocabulary, warnings):
  _write(tmp_path / "hi.txt", "नमस्ते\n\nदुनिया\n".encode())
  _write(tmp_path / "ta" / "part-0.txt", "வணக்கம்\n".encode())
  _write(tmp_path / "ta" / "part-1.txt", b"hello\n" + INVALID + b"world\n")
  _write(tmp_path / "en.txt", b"")
  registered = sources.register_sources(
      [{"kind": "text", "name": "web", "path": str(tmp_path)}], vocabulary)

  assert [t.name.split(".")[0] for t in registered] == ["web_hi", "web_ta"]
  hindi, tamil = (t.name for t in registered)
  assert _texts(hindi, vocabulary) == [("", "नमस्ते", "hi", "hi"),
                                       ("", "दुनिया", "hi", "hi")]
  assert [t[1] for t in _texts(tamil, vocabulary)] == ["வணக்கம்", "hello",
                                                       "world"]
  assert seqio.get_mixture_or_task(tamil).num_input_examples("train") == 3
  part_1 = str(tmp_path / "ta" / "part-1.txt")
  assert f"Skipping line 2 of {part_1}: invalid UTF-8 at byte 3" in warnings
  assert f"Skipped 1 invalid records of {part_1}" in warnings
  assert f"{tmp_path / 'en.txt'} has no examples" in warnings


def test_jsonl_languages_and_pairs(tmp_path, vocabulary, warnings):
  lines = [
      {"text": "hello", "language": "en"},
      {"text": "नमस्ते", "language": "hi"},
      {"text": "no language"},
      {"body": "wrong field", "language": "en"},
  ]
  data = b"".join(json.dumps(x, ensure_ascii=False).encode() + b"\n"
                  for x in lines)
  path = _write(tmp_path / "mono" / "mixed.jsonl",
                data + b"{not json\n" + INVALID)
  empty = _write(tmp_path / "mono" / "empty.jsonl", b"")
  registered = sources.register_sources(
      [{"kind": "jsonl", "name": "j", "path": str(tmp_path / "mono")}],
      vocabulary)
  assert [(t.inputs_language, t.targets_language) for t in registered] == [
      ("en", "en"), ("hi", "hi")]
  assert [t[1] for t in _texts(registered[0].name, vocabulary)] == ["hello"]
  for number in (3, 4, 5, 6):
    assert any(w.startswith(f"Skipping line {number} of {path}")
               for w in warnings), number
  assert f"Skipped 4 invalid records of {path}" in warnings
  assert f"{empty} has no examples" in warnings

  pair = {"source": "hello", "source_language": "en", "text": "नमस्ते",
          "language": "hi"}
  parallel = _write(tmp_path / "pairs" / "en-hi.jsonl",
                    json.dumps(pair).encode() + b"\n")
  [task] = sources.register_sources(
      [{"kind": "jsonl", "name": "p", "path": str(parallel),
        "source_field": "source"}], vocabulary)
  assert task.name.startswith("p_en_hi.vocab_")
  assert _texts(task.name, vocabulary) == [("hello", "नमस्ते", "en", "hi")]


def test_tfrecord_records(tmp_path, vocabulary, warnings):
  path = _write_tfrecord(tmp_path / "ta.tfrecord", [
      _example(text="வணக்கம்".encode()),
      _example(text=INVALID.strip()),
      b"not a proto",
      _example(text=b"hi there", language=b"en"),
  ])
  _write_tfrecord(tmp_path / "hi.tfrecord", [])
  registered = sources.register_sources(
      [{"kind": "tfrecord", "name": "r", "path": str(tmp_path)}], vocabulary)
  by_language = {t.targets_language: t.name for t in registered}
  assert sorted(by_language) == ["en", "ta"]
  assert [t[1] for t in _texts(by_language["ta"], vocabulary)] == ["வணக்கம்"]
  assert [t[1] for t in _texts(by_language["en"], vocabulary)] == ["hi there"]
  assert any(w.startswith(f"Skipping record 2 of {path}: invalid UTF-8")
             for w in warnings)
  assert any(w.startswith(f"Skipping record 3 of {path}") for w in warnings)
  assert f"Skipped 2 invalid records of {path}" in warnings
  assert f"{tmp_path / 'hi.tfrecord'} has no examples" in warnings


def test_validation_split(tmp_path, vocabulary):
  _write(tmp_path / "train" / "hi.txt", "एक\nदो\n".encode())
  _write(tmp_path / "valid" / "hi.txt", "तीन\n".encode())
  [task] = sources.register_sources(
      [{"kind": "text", "name": "v", "path": str(tmp_path / "train"),
        "validation_path": str(tmp_path / "valid")}], vocabulary)
  assert [t[1] for t in _texts(task.name, vocabulary, "validation")] == [
      "तीन"]


@pytest.mark.parametrize("num_files", [1, 2, 5])
@pytest.mark.parametrize("num_shards", [2, 4])
def test_shards_are_disjoint_and_cover(tmp_path, num_files, num_shards):
  lines = [f"line {i}" for i in range(23)]
  for f in range(num_files):
    _write(tmp_path / f"hi.{f}.txt",
           "".join(l + "\n" for l in lines[f::num_files]).encode())
  source = file_sources.pair_sources(
      {"train": str(tmp_path)}, "text", file_sources.Fields())[(None, "hi")]
  seen = []
  for index in range(num_shards):
    shard = seqio.ShardInfo(index=index, num_shards=num_shards)
    texts = [ex["targets"].decode() for ex in
             source.get_dataset("train", shard_info=shard).as_numpy_iterator()]
    assert texts, index
    seen.extend(texts)
  assert sorted(seen) == sorted(lines)
  assert len(seen) == len(set(seen))


def test_empty_sources_raise(tmp_path, vocabulary):
  _write(tmp_path / "hi.txt", b"\n\n")
  with pytest.raises(DataError, match="no valid examples"):
    sources.register_sources(
        [{"kind": "text", "name": "e", "path": str(tmp_path)}], vocabulary)
  with pytest.raises(DataError, match="no text files found"):
    sources.register_sources(
        [{"kind": "text", "name": "e", "path": str(tmp_path / "none")}],
        vocabulary)


def test_text_file_without_language_raises(tmp_path, vocabulary):
  _write(tmp_path / "corpus.txt", b"text\n")
  with pytest.raises(DataError, match="no valid examples"):
    sources.register_sources(
        [{"kind": "text", "name": "n", "path": str(tmp_path)}], vocabulary)


@pytest.mark.parametrize("spec, message", [
    ({"kind": "csv", "name": "a"}, "has kind 'csv'"),
    ({"kind": "text", "name": "a b", "path": "x"}, "has name 'a b'"),
    ({"kind": "text", "name": "a"}, "needs 'path'"),
    ({"kind": "text", "name": "a", "path": "x", "colour": 1},
     "unknown keys colour"),
    ({"kind": "tfds", "name": "a", "dataset": "wiki40b/{language}"},
     "needs 'languages'"),
    ({"kind": "text", "name": "a", "path": "x", "languages": ["xx"]},
     "unknown language code 'xx'"),
])
def test_invalid_specs(spec, message, vocabulary):
  with pytest.raises(ConfigError, match=message):
    sources.register_sources([spec], vocabulary)


def test_language_missing_from_table(tmp_path, vocabulary):
  _write(tmp_path / "yue.txt", b"text\n")
  table = languages.language_table(languages=("en", "hi"))
  with pytest.raises(ConfigError, match="'yue'"):
    sources.register_sources(
        [{"kind": "text", "name": "t", "path": str(tmp_path)}], vocabulary,
        table)
