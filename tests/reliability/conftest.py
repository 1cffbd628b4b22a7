"""A small tokenizer and `sutra-train` command lines for the reliability tests.

The runs go through the real entry point (`python -m sutra_jax.cli.train`)
with the real seqio pipeline of the demo corpus, restricted to English and
Spanish, and a model small enough to compile in seconds.
"""

import os
import sys

import pytest

from sutra_jax.data import corpus
from sutra_jax.tokenizer import train as tokenizer_train

LANGUAGES = ("en", "es")

# Tiny shapes: the step takes milliseconds, so compilation and the imports
# dominate each run (about 15-20 s of CPU time per process).
TINY_MODEL = (
    "ModelConfig.d_model = 16",
    "ModelConfig.num_heads = 2",
    "ModelConfig.num_kv_heads = 1",
    "ModelConfig.head_dim = 8",
    "ModelConfig.mlp_dim = 32",
    "ModelConfig.expert_mlp_dim = 16",
    "ModelConfig.num_experts = 4",
    "ModelConfig.experts_per_token = 2",
    "ModelConfig.num_encoder_layers = 1",
    "ModelConfig.num_core_layers = 1",
    "ModelConfig.num_decoder_layers = 1",
    f"language_table.languages = {list(LANGUAGES)}",
    f"phase_mixture.chat_languages = {list(LANGUAGES)}",
    "PhaseConfig.batch_size = 8",
    "PhaseConfig.sequence_length = 16",
    "OptimizerConfig.warmup_steps = 2",
)


@pytest.fixture(scope="session")
def vocabulary_path(tmp_path_factory) -> str:
  """A 500-piece SentencePiece model of the English and Spanish demo text."""
  texts = {code: lines for code, lines in
           corpus.demo_texts_by_language("train").items()
           if code in LANGUAGES}
  prefix = tmp_path_factory.mktemp("tokenizer") / "spm"
  return tokenizer_train.train_sentencepiece(texts, str(prefix), 500,
                                             character_coverage=0.98)


def train_command(run_dir, vocabulary, *bindings):
  """The `sutra-train` command of a tiny concept phase in `run_dir`."""
  return [sys.executable, "-m", "sutra_jax.cli.train", f"--run_dir={run_dir}",
          "--gin_file=runs/demo.gin", "--gin_file=phases/concept.gin",
          f"--gin_bindings=VOCABULARY = '{vocabulary}'",
          *(f"--gin_bindings={b}" for b in (*TINY_MODEL, *bindings))]


def environment(devices: int = 8) -> dict[str, str]:
  """The subprocess environment: CPU only, `devices` simulated devices."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def saved_steps(run_dir) -> list[int]:
  """Finished step folders of `run_dir`, read from the folder names.

  Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it
  when complete, so a folder named by digits alone is a finished save.
  """
  folder = os.path.join(run_dir, "checkpoints")
  if not os.path.isdir(folder):
    return []
  return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


def read_checkpoint(run_dir, step) -> dict:
  """Reads the array items of a step as NumPy trees, without a target."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  items = {}
  for name in ("params", "opt_state", "rng"):
    path = os.path.join(run_dir, "checkpoints", str(step), name)
    with ocp.PyTreeCheckpointer() as checkpointer:
      tree = checkpointer.metadata(path).item_metadata.tree
      args = jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      items[name] = checkpointer.restore(
          path, args=ocp.args.PyTreeRestore(restore_args=args))
  return items


def assert_trees_bit_identical(actual, expected) -> None:
  """Asserts equal structure and equal bytes in every leaf."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  actual_leaves, actual_def = jax.tree_util.tree_flatten_with_path(actual)
  expected_leaves, expected_def = jax.tree_util.tree_flatten_with_path(
      expected)
  assert actual_def == expected_def
  for (path, a), (_, b) in zip(actual_leaves, expected_leaves):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, path
    assert a.tobytes() == b.tobytes(), jax.tree_util.keystr(path)
