"""The catalogue of bad inputs: one row per case, listed in docs/reliability.md.

Every row runs an entry point in a subprocess and requires: a non-zero exit
status (2), exactly one `error: ...` line on stderr that contains the row's
expected text, no traceback, and no half-written output (no `*.tmp` file and
no new checkpoint step anywhere under the test's folder).

To add a case, append a `Case` to `CASES`. Placeholders in the arguments:
{tmp} the test's folder, {spm} a small SentencePiece model, {spm_other} one
with another vocabulary size, {run} a copy of a finished 3-step training run
(set `needs_run=True`; such rows are slow because the run is trained once per
session). `prepare(tmp)` writes input files before the command runs.
"""

import dataclasses
import pathlib
import resource
import shutil
import subprocess
import sys
from typing import Callable

import pytest

from tests.reliability.conftest import (LANGUAGES, environment, saved_steps,
                                        train_command)


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad input.

  Attributes:
    name: the row's test id.
    command: `python -m` module and arguments, with placeholders.
    expected: text the error line must contain.
    prepare: writes the row's input files into the test's folder.
    needs_run: the command needs a finished training run at {run}.
    file_size_limit: RLIMIT_FSIZE of the subprocess in bytes, to simulate a
      full disk (writes past it fail with EFBIG).
  """

  name: str
  command: tuple[str, ...]
  expected: str
  prepare: Callable[[pathlib.Path], None] | None = None
  needs_run: bool = False
  file_size_limit: int | None = None


def _train(*bindings, run_dir="{tmp}/out", gin_files=()):
  """A `sutra-train` command of the tiny phase with extra gin bindings."""
  command = train_command(run_dir, "{spm}", *bindings)[2:]
  return tuple(command[:1] + [f"--gin_file={f}" for f in gin_files] +
               command[1:])


def _write(relative: str, content: bytes) -> Callable[[pathlib.Path], None]:
  def prepare(tmp: pathlib.Path) -> None:
    path = tmp / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
  return prepare


def _truncate_params(tmp: pathlib.Path) -> None:
  """Empties every data file of the parameters of the run's newest step."""
  step = max(saved_steps(tmp / "run"))
  for path in (tmp / "run" / "checkpoints" / str(step) / "params").rglob("*"):
    if path.is_file() and "ocdbt" in str(path.relative_to(tmp)):
      path.write_bytes(b"")


def _no_valid_step(tmp: pathlib.Path) -> None:
  (tmp / "empty_run" / "checkpoints" /
   "7.orbax-checkpoint-tmp-1700000000").mkdir(parents=True)
  (tmp / "empty_run" / "config.gin").write_text("")


_TOKENIZER = ("sutra_jax.cli.tokenizer", "train", "--input_dir={tmp}/text",
              "--vocab_size=500", "--output={tmp}/spm_out")

CASES = (
    Case("unknown_language_code",
         _train("language_table.languages = ['en', 'xx']"),
         "unknown language code 'xx'"),
    Case("misspelt_gin_binding", _train("PhaseConfig.num_stepz = 3"),
         "num_stepz"),
    Case("gin_file_not_found",
         _train(gin_files=["phases/no_such_phase.gin"]),
         "gin file not found: 'phases/no_such_phase.gin'"),
    Case("mesh_not_dividing_devices", _train("make_mesh.fsdp = 3"),
         "does not divide the 8 devices"),
    Case("batch_not_divisible_by_data_parallel",
         _train("PhaseConfig.batch_size = 12"),
         "PhaseConfig.batch_size = 12 does not divide among the 8 "
         "data-parallel devices"),
    Case("zero_learning_rate",
         _train("OptimizerConfig.peak_learning_rate = 0.0"),
         "OptimizerConfig.peak_learning_rate = 0.0: expected a number > 0"),
    Case("negative_learning_rate",
         _train("OptimizerConfig.peak_learning_rate = -0.001"),
         "OptimizerConfig.peak_learning_rate = -0.001"),
    Case("zero_sequence_length", _train("PhaseConfig.sequence_length = 0"),
         "PhaseConfig.sequence_length = 0: expected a positive integer"),
    Case("negative_batch_size", _train("PhaseConfig.batch_size = -8"),
         "PhaseConfig.batch_size = -8: expected a positive integer"),
    Case("phase_freezes_everything",
         _train("PhaseConfig.trainable = ['^no_such_module/']"),
         "'^no_such_module/'"),
    Case("phase_freezes_nothing",
         _train("PhaseConfig.trainable = ['^(embed|encoder|core|decoder|"
                "final_norm|lm_head)/']"),
         "selects every parameter, so nothing is frozen"),
    Case("output_dir_not_writable", _train(run_dir="{tmp}/blocker/out"),
         "run directory '{tmp}/blocker/out' is not writable",
         prepare=_write("blocker", b"")),
    Case("empty_corpus", _TOKENIZER, "no text found",
         prepare=_write("text/en.txt", b"")),
    Case("invalid_utf8_corpus", _TOKENIZER, "is not valid UTF-8",
         prepare=_write("text/en.txt", b"hello\n\xff\xfe world\n")),
    Case("checkpoint_dir_without_valid_step",
         ("sutra_jax.cli.decode", "--checkpoint_dir={tmp}/empty_run",
          "--prompt=hi", "--output_language=en"),
         "no valid checkpoint step", prepare=_no_valid_step),
    Case("vocabulary_differs_from_checkpoint",
         _train("PhaseConfig.num_steps = 5",
                "VOCABULARY = '{spm_other}'", run_dir="{run}"),
         "has 600 pieces but the checkpoint", needs_run=True),
    Case("corrupted_checkpoint_file",
         _train("PhaseConfig.num_steps = 5", run_dir="{run}"),
         "is unreadable (DATA_LOSS", prepare=_truncate_params,
         needs_run=True),
    Case("mmlu_wrong_answer_letter",
         ("sutra_jax.cli.eval", "mmlu", "--data_dir={tmp}/mmlu_en",
          "--checkpoint_dir={tmp}/no_run"),
         "law_val.csv row 2: invalid answer 'F': expected one of A, B, C, D",
         prepare=_write("mmlu_en/val/law_val.csv",
                        b"Q1,a,b,c,d,A\nQ2,a,b,c,d,F\n")),
    Case("mmlu_malformed_csv",
         ("sutra_jax.cli.eval", "mmlu", "--data_dir={tmp}/mmlu_en",
          "--checkpoint_dir={tmp}/no_run"),
         "law_val.csv row 1: expected 6 columns",
         prepare=_write("mmlu_en/val/law_val.csv", b"Q1,a,b\n")),
    Case("aot_unknown_topology",
         ("sutra_jax.cli.aot", "--topology=v9-8",
          "--gin_file=models/small.gin"),
         "'v9-8'"),
    Case("decode_language_without_decoder_blocks",
         ("sutra_jax.cli.decode", "--checkpoint_dir={run}", "--prompt=hi",
          "--output_language=pt"),
         "unknown language code 'pt' in --output_language", needs_run=True),
    Case("disk_full_while_saving",
         _train("PhaseConfig.num_steps = 3",
                "PhaseConfig.checkpoint_every = 3"),
         "cannot save the checkpoint of step 3", file_size_limit=16384),
)


@pytest.fixture(scope="session")
def other_vocabulary_path(tmp_path_factory) -> str:
  """A 600-piece model, so that its size differs from `vocabulary_path`."""
  from sutra_jax.data import corpus  # pylint: disable=g-import-not-at-top
  from sutra_jax.tokenizer import train  # pylint: disable=g-import-not-at-top

  texts = {code: lines for code, lines in
           corpus.demo_texts_by_language("train").items()
           if code in LANGUAGES}
  prefix = tmp_path_factory.mktemp("tokenizer_other") / "spm"
  return train.train_sentencepiece(texts, str(prefix), 600,
                                   character_coverage=0.98)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, vocabulary_path) -> pathlib.Path:
  """A finished 3-step run of the tiny phase, trained once per session."""
  run_dir = tmp_path_factory.mktemp("finished") / "run"
  result = subprocess.run(
      train_command(run_dir, vocabulary_path, "PhaseConfig.num_steps = 3",
                    "PhaseConfig.checkpoint_every = 3"),
      env=environment(), capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return run_dir


def _params():
  params = []
  for case in CASES:
    marks = []
    if case.needs_run or case.file_size_limit is not None:
      marks.append(pytest.mark.slow)
    params.append(pytest.param(case, id=case.name, marks=marks))
  return params


def _files(folder: pathlib.Path) -> dict[str, bytes]:
  return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", _params())
def test_bad_input_fails_with_one_clear_line(case, tmp_path, request,
                                             vocabulary_path):
  values = {"tmp": str(tmp_path), "spm": vocabulary_path,
            "run": str(tmp_path / "run")}
  if "{spm_other}" in " ".join(case.command):
    values["spm_other"] = request.getfixturevalue("other_vocabulary_path")
  if case.needs_run:
    shutil.copytree(request.getfixturevalue("finished_run"), tmp_path / "run")
  if case.prepare:
    case.prepare(tmp_path)
  run_before = saved_steps(tmp_path / "run")
  config_before = _files(tmp_path / "run") if case.needs_run else {}
  limit = case.file_size_limit

  result = subprocess.run(
      [sys.executable, "-m", *(a.format(**values) for a in case.command)],
      env=environment(), capture_output=True, text=True, timeout=900,
      cwd=tmp_path,
      preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                             (limit, limit)))
      if limit else None)

  stderr = result.stderr
  assert result.returncode == 2, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, stderr[-3000:]
  assert case.expected.format(**values) in errors[0], errors[0]
  # No half-written output: no temporary file, no new checkpoint step, and
  # a resumed run's files are left as they were.
  assert not list(tmp_path.rglob("*.tmp")), list(tmp_path.rglob("*.tmp"))
  assert saved_steps(tmp_path / "out") == []
  assert saved_steps(tmp_path / "run") == run_before
  if case.needs_run:
    config = str(tmp_path / "run" / "config.gin")
    assert _files(tmp_path / "run")[config] == config_before[config]
