"""Model FLOPs per token, for throughput and model FLOPs utilisation (MFU).

The count is of model FLOPs: the matmuls that the architecture needs, not
what the compiled program executes. Recomputation under `remat`, padding
and the dense evaluation of masked attention scores are not counted, so MFU
stays comparable across implementations.
"""

import gin

from sutra_jax.errors import ConfigError
from sutra_jax.models.config import ModelConfig


def attention_matmul_params(config: ModelConfig) -> int:
  """Counts the weights of one attention layer's projections (Q, K, V, out)."""
  d, h, k, dh = (config.d_model, config.num_heads, config.num_kv_heads,
                 config.head_dim)
  return d * h * dh + 2 * d * k * dh + h * dh * d


def active_matmul_params(config: ModelConfig) -> int:
  """Counts the matmul weights that one token multiplies with.

  A token uses the blocks of one language group in the encoder and the
  decoder, and `experts_per_token` of the `num_experts` experts of each core
  layer, plus the router (or the one MLP of a dense core). The output head counts whether or not it is tied
  to the embedding, because the logits are a [D, V] matmul either way. The
  embedding lookup and the norms are not matmuls and are left out.
  """
  d = config.d_model
  attention = attention_matmul_params(config)
  language_block = attention + 3 * d * config.mlp_dim
  if config.core_mlp == "dense":
    core_layer = attention + 3 * d * config.expert_mlp_dim
  else:
    core_layer = (attention + d * config.num_experts +
                  config.experts_per_token * 3 * d * config.expert_mlp_dim)
  language_layers = config.num_encoder_layers + config.num_decoder_layers
  return (language_layers * language_block +
          config.num_core_layers * core_layer + d * config.vocab_size)


def flops_per_token(config: ModelConfig, seq_len: int) -> int:
  """Estimates the training FLOPs (forward and backward) per token.

    flops = 6 * P_active + 6 * n_attention_layers * H * Dh * seq_len

  P_active is `active_matmul_params`. A matmul with P weights costs 2 * P
  FLOPs per token forward and 4 * P backward, hence the 6. The second term
  is the attention scores and the weighted sum of values: forward, Q K^T
  and A V cost 2 * seq_len * H * Dh each per token over all key positions.
  With a causal mask a token attends to seq_len / 2 positions on average,
  which gives 2 * seq_len * H * Dh forward and 3 times that with the
  backward pass. n_attention_layers counts the encoder, core and decoder
  layers.

  Args:
    config: the model's hyperparameters.
    seq_len: tokens per sequence (L).

  Returns:
    Model FLOPs per token, an estimate that ignores the norms, the softmaxes,
    the rotary embedding and the router's top-k.
  """
  attention_layers = (config.num_encoder_layers + config.num_core_layers +
                      config.num_decoder_layers)
  attention = (6 * attention_layers * config.num_heads * config.head_dim *
               seq_len)
  return 6 * active_matmul_params(config) + attention


@gin.configurable
def peak_flops_per_device(value: float | None = None) -> float | None:
  """Returns the gin-bound peak FLOP/s of one device, used for MFU.

  Bind it to the accelerator's peak dense matmul rate in the training dtype,
  from the vendor's data sheet, for example in a gin file:

    peak_flops_per_device.value = 9.89e14

  Args:
    value: peak FLOP/s per device. None, the default, leaves MFU out of the
      logs, because no peak is known for CPUs and unlisted accelerators.

  Raises:
    ConfigError: `value` is not positive.
  """
  if value is not None and not value > 0:
    raise ConfigError(f"invalid peak_flops_per_device.value = {value!r}: "
                     "expected a positive FLOP/s rate or None")
  return value
