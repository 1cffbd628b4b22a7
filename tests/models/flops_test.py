"""Tests for the model FLOPs count."""

import dataclasses

import pytest

from sutra_jax.errors import ConfigError
from sutra_jax.models import flops
from sutra_jax.models.config import ModelConfig

# One layer of each kind, so the hand count below stays short.
TINY = ModelConfig(vocab_size=64, d_model=16, num_heads=2, num_kv_heads=1,
                   head_dim=8, mlp_dim=32, expert_mlp_dim=16, num_experts=4,
                   experts_per_token=2, num_encoder_layers=1,
                   num_core_layers=1, num_decoder_layers=1,
                   num_language_groups=2, language_group_ids=(0, 1, 1))


def test_flops_per_token_matches_hand_count():
  # Attention: Q 16*2*8 = 256, K and V 16*1*8 = 128 each, out 2*8*16 = 256.
  attention = 256 + 128 + 128 + 256
  # Language block: attention + gate, up, down of 16 x 32 = 3 * 512.
  language_block = attention + 3 * 512
  # Core layer: attention + router 16*4 + 2 of 4 experts of 3 * 16*16.
  core_layer = attention + 64 + 2 * 3 * 256
  lm_head = 16 * 64
  active = 2 * language_block + core_layer + lm_head
  # Causal attention scores and values: 6 * layers * heads * head_dim * L.
  attention_scores = 6 * 3 * 2 * 8 * 32

  assert flops.active_matmul_params(TINY) == active == 8000
  assert flops.flops_per_token(TINY, seq_len=32) == (6 * active +
                                                     attention_scores)


def test_active_params_ignore_language_groups():
  more_groups = dataclasses.replace(TINY, num_language_groups=3,
                                    language_group_ids=(0, 1, 2))
  assert (flops.active_matmul_params(more_groups) ==
          flops.active_matmul_params(TINY))


def test_peak_flops_rejects_non_positive():
  assert flops.peak_flops_per_device() is None
  assert flops.peak_flops_per_device(1e12) == 1e12
  with pytest.raises(ConfigError, match="peak_flops_per_device"):
    flops.peak_flops_per_device(0.0)
