"""Shared pieces of the training tests: a tiny model and synthetic batches."""

import numpy as np

# Gin bindings of a model small enough to compile in seconds on a CPU, with
# three languages in two groups (Marathi shares the Hindi blocks).
TINY_BINDINGS = """
ModelConfig.vocab_size = 64
ModelConfig.d_model = 16
ModelConfig.num_heads = 2
ModelConfig.num_kv_heads = 1
ModelConfig.head_dim = 8
ModelConfig.mlp_dim = 32
ModelConfig.expert_mlp_dim = 16
ModelConfig.num_experts = 4
ModelConfig.experts_per_token = 2
ModelConfig.num_encoder_layers = 1
ModelConfig.num_core_layers = 1
ModelConfig.num_decoder_layers = 1
language_table.languages = ['en', 'hi', 'mr']
language_table.groups = {'mr': 'hi'}
"""

VOCAB_SIZE = 64
NUM_LANGUAGES = 3


def synthetic_batch(index: int, batch_size: int, length: int,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """Returns batch number `index` of a deterministic synthetic stream.

  Each row packs two segments of different languages, and the last quarter
  of the last row is padding, so the batch has the layout of
  `sutra_jax.data.pipeline.get_dataset`.
  """
  rng = np.random.default_rng([seed, index])
  tokens = rng.integers(3, VOCAB_SIZE, (batch_size, length + 1))
  split = length // 2
  segment_ids = np.where(np.arange(length) < split, 1, 2)
  segment_ids = np.tile(segment_ids, (batch_size, 1))
  segment_ids[-1, 3 * length // 4:] = 0
  positions = np.where(np.arange(length) < split, np.arange(length),
                       np.arange(length) - split)
  positions = np.tile(positions, (batch_size, 1)) * (segment_ids > 0)
  first = rng.integers(0, NUM_LANGUAGES, (batch_size, 1))
  second = rng.integers(0, NUM_LANGUAGES, (batch_size, 1))
  language_ids = np.where(segment_ids == 1, first, second)
  language_ids = language_ids * (segment_ids > 0)
  return {
      "decoder_input_tokens": (tokens[:, :-1] * (segment_ids > 0)).astype(
          np.int32),
      "decoder_target_tokens": (tokens[:, 1:] * (segment_ids > 0)).astype(
          np.int32),
      "decoder_loss_weights": (segment_ids > 0).astype(np.float32),
      "decoder_segment_ids": segment_ids.astype(np.int32),
      "decoder_positions": positions.astype(np.int32),
      "encoder_language_ids": language_ids.astype(np.int32),
      "decoder_language_ids": language_ids.astype(np.int32),
  }


class SyntheticData:
  """A `trainer.DatasetFn` of synthetic batches that records its calls."""

  def __init__(self, seed: int = 0):
    self.seed = seed
    self.skipped: list[int] = []

  def __call__(self, phase, table, shard_index, num_shards, skip_batches):
    del table, shard_index
    self.skipped.append(skip_batches)
    rows = phase.batch_size // num_shards

    def batches():
      index = skip_batches
      while True:
        yield synthetic_batch(index, rows, phase.sequence_length, self.seed)
        index += 1

    return batches()
