"""The SUTRA model: language encoder, concept core, language decoder.

Data flow, for int32 inputs of shape [B, L]:

  tokens -> embed -> encoder (routed by encoder_language_ids)
         -> core: num_core_layers x [RMSNorm, attention, RMSNorm, top-k MoE]
         -> decoder (routed by decoder_language_ids) -> final_norm
         -> lm_head -> float32 logits [B, L, V]

The concept core never receives a language id.

Parameter paths are the '/'-joined keys of `nnx.state(model)`. The trainer
selects trainable sets by regular expressions over them, for example
`^core/`:

  embed/embedding                                     [V, D]
  encoder/layers/<i>/attention_norm, mlp_norm         [G, D]
  encoder/layers/<i>/query                            [G, D, H, Dh]
  encoder/layers/<i>/key, value                       [G, D, K, Dh]
  encoder/layers/<i>/out                              [G, H, Dh, D]
  encoder/layers/<i>/gate, up                         [G, D, F]
  encoder/layers/<i>/down                             [G, F, D]
  core/layers/<i>/attention_norm/scale, mlp_norm/scale  [D]
  core/layers/<i>/attention/query                     [D, H, Dh]
  core/layers/<i>/attention/key, value                [D, K, Dh]
  core/layers/<i>/attention/out                       [H, Dh, D]
  core/layers/<i>/moe/router/kernel                   [D, E]
  core/layers/<i>/moe/gate, up                        [E, D, F_e]
  core/layers/<i>/moe/down                            [E, F_e, D]
  core/layers/<i>/mlp/gate, up, down                  [D, F_e], [F_e, D],
                                                      instead of moe/ in a
                                                      dense core
  decoder/layers/<i>/...                              as in the encoder
  final_norm/scale                                    [D]
  lm_head/kernel                                      [D, V], absent when
                                                      tie_embeddings is set

G is the number of language groups, F the language block MLP width and F_e
the expert MLP width.
"""

from typing import Any

import flax.struct
from flax import nnx
import jax
import jax.numpy as jnp

from sutra_jax.models.config import ModelConfig
from sutra_jax.models.language_blocks import LanguageStack
from sutra_jax.models.layers import (MLP, Attention, Dense, Embed, RMSNorm,
                                     REMAT_POLICIES, remat_layer)
from sutra_jax.models.moe import MoE
from sutra_jax.models.sharding import ACTIVATION, LOGITS, constrain


@flax.struct.dataclass
class ModelOutput:
  """Outputs of `SutraModel`.

  Attributes:
    logits: [B, L, V] float32 next-token logits.
    core_hidden: [B, L, D] output of the concept core, before the decoder.
    aux: `load_balancing_loss` and `router_z_loss`, float32 scalars averaged
      over the core layers, the same per layer as
      `layer_load_balancing_loss` and `layer_router_z_loss`
      [num_core_layers], `dropped_slots` [num_core_layers], the routed
      copies of real tokens that dispatch dropped, and `expert_load`
      [num_core_layers, E], the
      fraction of each layer's routed token slots per expert. It also
      contains `expert_slot_counts` [num_core_layers, B, L, E], how many of
      each token's k slots each expert receives. This per-token view of the
      router's choices lets the train step count the load by language while
      the core takes no language id. All count real tokens only.
  """

  logits: jax.Array
  core_hidden: jax.Array
  aux: dict[str, Any]


class CoreLayer(nnx.Module):
  """One concept core layer: pre-norm attention, then a pre-norm MoE.

  With `core_mlp='dense'` the MoE is replaced by one SwiGLU MLP (parameter
  `mlp` instead of `moe`), the dense baseline of the same width as an
  expert.
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    norm_args = dict(eps=config.norm_eps, dtype=config.activation_dtype,
                     param_dtype=config.weight_dtype, rngs=rngs)
    self.attention_norm = RMSNorm(config.d_model, **norm_args)
    self.attention = Attention(config, rngs=rngs)
    self.mlp_norm = RMSNorm(config.d_model, **norm_args)
    if config.core_mlp == "dense":
      self.mlp = MLP(config.d_model, config.expert_mlp_dim,
                     dtype=config.activation_dtype,
                     param_dtype=config.weight_dtype, rngs=rngs)
    else:
      self.moe = MoE(config, rngs=rngs)

  def __call__(self, x, token_mask, segment_ids, positions):
    """Maps [B, L, D] to ([B, L, D], the MoE's auxiliary outputs or {})."""
    x = x + self.attention(self.attention_norm(x), segment_ids, positions)
    if hasattr(self, "mlp"):
      return x + self.mlp(self.mlp_norm(x)), {}
    update, aux = self.moe(self.mlp_norm(x), token_mask)
    return x + update, aux


def _apply_core_layer(layer, x, token_mask, segment_ids, positions):
  return layer(x, token_mask, segment_ids, positions)


class ConceptCore(nnx.Module):
  """The language-agnostic stack of attention + MoE layers."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.layers = nnx.List([CoreLayer(config, rngs=rngs)
                            for _ in range(config.num_core_layers)])
    self.num_experts = config.num_experts
    self.remat = config.remat
    self.scan_layers = config.scan_core_layers

  def __call__(self, x, token_mask, segment_ids, positions):
    """Maps [B, L, D] to ([B, L, D], auxiliary losses and expert load)."""
    if self.scan_layers and len(self.layers) > 1:
      return self._scan(x, token_mask, segment_ids, positions)
    layer_aux = []
    call = remat_layer(_apply_core_layer, self.remat)
    for layer in self.layers:
      x, aux = call(layer, x, token_mask, segment_ids, positions)
      x = constrain(x, ACTIVATION)
      if aux:
        layer_aux.append(aux)
    return x, self._combine(layer_aux, token_mask)

  def _scan(self, x, token_mask, segment_ids, positions):
    """Runs the layers as one `jax.lax.scan` over their stacked parameters.

    The compiled program then contains one layer in a loop, so one layer's
    gathered weights and working set are alive at a time. In an unrolled
    stack the scheduler may start many layers' weight gathers at once.

    The parameters keep their per-layer layout in the model and its
    checkpoints. Each step stacks them, which costs one copy of the core's
    sharded parameters and of their gradients.
    """
    graphdef, _ = nnx.split(self.layers[0])
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                           *(nnx.state(layer) for layer in self.layers))

    def body(x, state):
      layer = nnx.merge(graphdef, state)
      x, aux = _apply_core_layer(layer, x, token_mask, segment_ids, positions)
      return constrain(x, ACTIVATION), aux

    if self.remat != "none":
      body = jax.checkpoint(body, policy=REMAT_POLICIES[self.remat])
    x, aux = jax.lax.scan(body, x, stacked)
    if not aux:
      return x, self._no_moe_aux(token_mask)
    return x, _summarize_aux(aux)

  def _combine(self, layer_aux, token_mask):
    if not layer_aux:
      return self._no_moe_aux(token_mask)
    return _summarize_aux({name: jnp.stack([aux[name] for aux in layer_aux])
                           for name in layer_aux[0]})

  def _no_moe_aux(self, token_mask):
    """Returns zero losses and an empty load (no core layer, or dense)."""
    zero = jnp.zeros((), jnp.float32)
    batch, length = token_mask.shape
    return {"load_balancing_loss": zero, "router_z_loss": zero,
            "layer_load_balancing_loss": jnp.zeros((0,), jnp.float32),
            "layer_router_z_loss": jnp.zeros((0,), jnp.float32),
            "dropped_slots": jnp.zeros((0,), jnp.float32),
            "expert_load": jnp.zeros((0, self.num_experts), jnp.float32),
            "expert_slot_counts": jnp.zeros(
                (0, batch, length, self.num_experts), jnp.float32)}


def _summarize_aux(stacked: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Builds the core's auxiliary outputs from the per-layer MoE outputs.

  Args:
    stacked: each MoE output, stacked over the layers on axis 0.

  Returns:
    The mean losses and the per-layer values.
  """
  # Averaged over layers, so a loss weight does not depend on depth.
  return {"load_balancing_loss": jnp.mean(stacked["load_balancing_loss"]),
          "router_z_loss": jnp.mean(stacked["router_z_loss"]),
          "layer_load_balancing_loss": stacked["load_balancing_loss"],
          "layer_router_z_loss": stacked["router_z_loss"],
          "dropped_slots": stacked["dropped_slots"],
          "expert_load": stacked["expert_load"],
          "expert_slot_counts": stacked["expert_slot_counts"]}


class SutraModel(nnx.Module):
  """Language-routed encoder and decoder around a mixture-of-experts core.

  Attributes:
    config: the model's hyperparameters.
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    dtypes = dict(dtype=config.activation_dtype,
                  param_dtype=config.weight_dtype)
    self.embed = Embed(config.vocab_size, config.d_model, **dtypes, rngs=rngs)
    self.encoder = LanguageStack(config, config.num_encoder_layers, rngs=rngs)
    self.core = ConceptCore(config, rngs=rngs)
    self.decoder = LanguageStack(config, config.num_decoder_layers, rngs=rngs)
    self.final_norm = RMSNorm(config.d_model, eps=config.norm_eps, **dtypes,
                              rngs=rngs)
    if not config.tie_embeddings:
      self.lm_head = Dense(config.d_model, config.vocab_size,
                           ("embed", "vocab"), **dtypes, rngs=rngs)

  def __call__(self, input_tokens: jax.Array, *,
               encoder_language_ids: jax.Array,
               decoder_language_ids: jax.Array,
               segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None) -> ModelOutput:
    """Runs the model on a batch of token sequences.

    Args:
      input_tokens: [B, L] int32 token ids.
      encoder_language_ids: [B, L] language id of each input token, which
        selects its encoder blocks.
      decoder_language_ids: [B, L] language id of the token that each
        position predicts, which selects its decoder blocks.
      segment_ids: [B, L] packed-segment ids. 0 marks padding, which no
        token attends to and which the auxiliary losses ignore. None means
        one unpadded segment per row.
      positions: [B, L] rotary positions, restarting at 0 in each packed
        segment. None means arange(L) in every row, which is only right for
        unpacked rows.

    Returns:
      The logits, the core's hidden states and the auxiliary MoE outputs.

    Raises:
      ValueError: an input is not [B, L] like `input_tokens`.
    """
    shape = input_tokens.shape
    if segment_ids is None:
      segment_ids = jnp.ones(shape, jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(shape[-1], dtype=jnp.int32),
                                   shape)
    _check_shapes(input_tokens, encoder_language_ids=encoder_language_ids,
                  decoder_language_ids=decoder_language_ids,
                  segment_ids=segment_ids, positions=positions)
    token_mask = (segment_ids != 0).astype(jnp.float32)

    x = constrain(self.embed(input_tokens), ACTIVATION)
    x = constrain(self.encoder(x, encoder_language_ids, segment_ids,
                               positions), ACTIVATION)
    core_hidden, aux = self.core(x, token_mask, segment_ids, positions)
    x = self.decoder(core_hidden, decoder_language_ids, segment_ids,
                     positions)
    x = self.final_norm(constrain(x, ACTIVATION))
    if self.config.tie_embeddings:
      logits = self.embed.attend(x)
    else:
      logits = self.lm_head(x, out_dtype=jnp.float32)
    return ModelOutput(logits=constrain(logits, LOGITS),
                       core_hidden=core_hidden, aux=aux)


def _check_shapes(input_tokens, **inputs) -> None:
  if input_tokens.ndim != 2:
    raise ValueError(f"input_tokens must be [B, L], got shape "
                     f"{input_tokens.shape}")
  for name, value in inputs.items():
    if value.shape != input_tokens.shape:
      raise ValueError(f"{name} has shape {value.shape} but input_tokens has "
                       f"{input_tokens.shape}: pass one value per token")
