"""Bad input on the command line: one error line, exit 2, no traceback."""

import os
import subprocess
import sys

import pytest

CASES = {
    "train_unknown_language": (
        ["sutra_jax.cli.train", "--run_dir={tmp}/run",
         "--gin_file=runs/demo.gin", "--gin_file=phases/concept.gin",
         "--gin_bindings=phase_mixture.chat_languages = ['en', 'xx']"],
        "unknown language code 'xx'"),
    "train_missing_gin_file": (
        ["sutra_jax.cli.train", "--run_dir={tmp}/run",
         "--gin_file=runs/no_such_file.gin"],
        "gin file not found: 'runs/no_such_file.gin'"),
    "train_unknown_binding": (
        ["sutra_jax.cli.train", "--run_dir={tmp}/run",
         "--gin_file=runs/demo.gin", "--gin_file=phases/concept.gin",
         "--gin_bindings=PhaseConfig.num_stepz = 3"],
        "num_stepz"),
    "eval_missing_data_dir": (
        ["sutra_jax.cli.eval", "perplexity", "--checkpoint_dir={tmp}",
         "--data_dir={tmp}/no_such_dir"],
        "data directory not found: '{tmp}/no_such_dir'"),
    "eval_missing_checkpoint_dir": (
        ["sutra_jax.cli.eval", "perplexity",
         "--checkpoint_dir={tmp}/no_such_run"],
        "checkpoint directory not found: '{tmp}/no_such_run'"),
    "eval_unknown_command": (
        ["sutra_jax.cli.eval", "accuracy", "--checkpoint_dir={tmp}"],
        "expected one command, one of perplexity"),
    "decode_missing_checkpoint_dir": (
        ["sutra_jax.cli.decode", "--checkpoint_dir={tmp}/no_such_run",
         "--prompt=hi", "--output_language=en"],
        "checkpoint directory not found"),
    "data_missing_mixture": (
        ["sutra_jax.cli.data", "inspect"],
        "--mixture is required"),
    "data_missing_vocabulary": (
        ["sutra_jax.cli.data", "inspect", "--mixture=m",
         "--gin_bindings=PhaseConfig.mixture = @source_mixture()",
         "--gin_bindings=source_mixture.name = 'm'",
         "--gin_bindings=source_mixture.vocabulary = '{tmp}/spm.model'",
         "--gin_bindings=source_mixture.sources = "
         "[{{'kind': 'text', 'name': 't', 'path': '{tmp}/none'}}]"],
        "SentencePiece model not found"),
    "tokenizer_missing_input_dir": (
        ["sutra_jax.cli.tokenizer", "train", "--input_dir={tmp}/no_such_dir",
         "--vocab_size=1000", "--output={tmp}/spm"],
        "data directory not found"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_line(name, tmp_path):
  arguments, expected = CASES[name]
  tmp = str(tmp_path)
  command = [sys.executable, "-m"] + [a.format(tmp=tmp) for a in arguments]
  env = dict(os.environ, JAX_PLATFORMS="cpu")

  result = subprocess.run(command, capture_output=True, text=True,
                          timeout=300, env=env)

  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines()
            if line.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-2000:]
  assert expected.format(tmp=tmp) in errors[0]
  assert not os.path.exists(os.path.join(tmp, "run", "checkpoints"))
