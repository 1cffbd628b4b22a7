"""Language-routed transformer blocks: the encoder and decoder of each language.

A `LanguageBlock` is a pre-norm transformer block (RMSNorm, grouped-query
attention, RMSNorm, SwiGLU MLP) whose weights all carry a leading
`language_groups` axis G. Every token uses the weights of its language group,
chosen deterministically from its language id. The projections run through
`grouped.GroupRouting`, so a batch that mixes many languages costs the same
as a batch of one: each token is multiplied only by its own group's weights.

A `LanguageStack` computes the routing of its id stream once per forward
pass and shares it with all of its blocks.

With a `tensor` mesh axis that divides the heads, the KV heads and the MLP
width, each block is tensor parallel inside the stack's `jax.shard_map`:
a device keeps its share of the heads and of the MLP width of every group,
and the partial outputs of the attention and MLP projections are summed
over `tensor`.
"""

import functools
import math

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sutra_jax.models import grouped
from sutra_jax.models.config import ModelConfig
from sutra_jax.models.layers import kernel_init, make_param, rms_norm
from sutra_jax.models.layers import remat_layer, rotary_attention
from sutra_jax.models import sharding
from sutra_jax.models.sharding import ACTIVATION, constrain


class LanguageBlock(nnx.Module):
  """A pre-norm transformer block with one set of weights per language group.

  Parameters, with G language groups and F = `mlp_dim`:
    attention_norm, mlp_norm: [G, D]
    query: [G, D, H, Dh]
    key, value: [G, D, K, Dh]
    out: [G, H, Dh, D]
    gate, up: [G, D, F]
    down: [G, F, D]
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    g, d, f = config.num_language_groups, config.d_model, config.mlp_dim
    h, k, dh = config.num_heads, config.num_kv_heads, config.head_dim
    dtype = config.weight_dtype
    norm_names = ("language_groups", "norm")
    self.attention_norm = make_param(rngs, nnx.initializers.ones, (g, d),
                                     norm_names, dtype)
    in_init = kernel_init(in_axis=1, out_axis=(2, 3), batch_axis=(0,))
    self.query = make_param(rngs, in_init, (g, d, h, dh),
                            ("language_groups", "embed", "heads", "head_dim"),
                            dtype)
    kv_names = ("language_groups", "embed", "kv_heads", "head_dim")
    self.key = make_param(rngs, in_init, (g, d, k, dh), kv_names, dtype)
    self.value = make_param(rngs, in_init, (g, d, k, dh), kv_names, dtype)
    self.out = make_param(
        rngs, kernel_init(in_axis=(1, 2), out_axis=3, batch_axis=(0,)),
        (g, h, dh, d), ("language_groups", "heads", "head_dim", "embed"),
        dtype)
    self.mlp_norm = make_param(rngs, nnx.initializers.ones, (g, d),
                               norm_names, dtype)
    mlp_init = kernel_init(in_axis=1, out_axis=2, batch_axis=(0,))
    self.gate = make_param(rngs, mlp_init, (g, d, f),
                           ("language_groups", "embed", "mlp"), dtype)
    self.up = make_param(rngs, mlp_init, (g, d, f),
                         ("language_groups", "embed", "mlp"), dtype)
    self.down = make_param(rngs, mlp_init, (g, f, d),
                           ("language_groups", "mlp", "embed"), dtype)
    self.norm_eps = config.norm_eps
    self.rope_theta = config.rope_theta
    self.query_chunk = config.attention_query_chunk
    self.dtype = config.activation_dtype

  def __call__(self, x: jax.Array, routing: grouped.GroupRouting,
               segment_ids: jax.Array, positions: jax.Array,
               tensor_axis: str | None = None) -> jax.Array:
    """Applies the block.

    Args:
      x: [B, L, D] activations.
      routing: the routing of the B * L tokens, flattened row-major.
      segment_ids: [B, L], 0 for padding.
      positions: [B, L] rotary positions.
      tensor_axis: inside `jax.shard_map`, the mesh axis over which this
        block's heads and MLP width are split, or None.

    Returns:
      [B, L, D].
    """
    batch, length, d_model = x.shape
    x = x.reshape(batch * length, d_model).astype(self.dtype)
    query, key, value = self.project_qkv(x, routing, batch, length)
    heads = rotary_attention(query, key, value, segment_ids, positions,
                             self.rope_theta, self.query_chunk)
    return self.add_attention_and_mlp(x, heads, routing, tensor_axis).reshape(
        batch, length, d_model)

  def _norm(self, x, scale, routing):
    return rms_norm(x, routing.gather(scale[...]), self.norm_eps, self.dtype)

  def project_qkv(self, x: jax.Array, routing: grouped.GroupRouting,
                  batch: int, length: int):
    """Normalises and projects the flat tokens [N, D], N = B * L.

    The KV-cache decoder (`sutra_jax.inference.kv_cache`) calls this and
    `add_attention_and_mlp` around its own cached attention.

    Returns:
      The query [B, L, H, Dh] and the key and value [B, L, K, Dh], before
      the rotary embedding.
    """
    normed = routing.to_slots(self._norm(x.astype(self.dtype),
                                     self.attention_norm, routing))

    def project(weights):
      # [G, D, heads, Dh] -> [G, D, heads * Dh] for the 2-D grouped matmul.
      g, d, num, dh = weights.shape
      flat = routing.matmul(normed, weights.reshape(g, d, num * dh))
      return routing.from_slots(flat).reshape(batch, length, num, dh)

    return (project(self.query[...]), project(self.key[...]),
            project(self.value[...]))

  def add_attention_and_mlp(self, x: jax.Array, heads: jax.Array,
                            routing: grouped.GroupRouting,
                            tensor_axis: str | None = None) -> jax.Array:
    """Adds the attention output and then the MLP to the flat residual.

    Args:
      x: [N, D] residual stream, in the activation dtype.
      heads: [B, L, H, Dh] attention heads of the same N = B * L tokens.
      routing: their routing.
      tensor_axis: the mesh axis that splits the heads and the MLP width,
        over which the partial outputs are summed, or None.

    Returns:
      The block's output [N, D].
    """
    def total(partial):
      return jax.lax.psum(partial, tensor_axis) if tensor_axis else partial

    x = x + total(self._project_out(heads, routing))
    return x + total(self._mlp(x, routing))

  def _project_out(self, heads, routing):
    """Maps heads [B, L, H, Dh] to the flat residual update [N, D]."""
    g, h, dh, d = self.out[...].shape
    flat = heads.reshape(-1, h * dh).astype(self.dtype)
    return routing.apply(flat, self.out[...].reshape(g, h * dh, d))

  def _mlp(self, x, routing):
    # The three projections stay in the slot layout, so the rows move into
    # it and back out once.
    normed = routing.to_slots(self._norm(x, self.mlp_norm, routing))
    return routing.from_slots(
        routing.swiglu(normed, self.gate[...], self.up[...], self.down[...]))


class LanguageStack(nnx.Module):
  """The language encoder or decoder: `num_layers` language blocks.

  Parameters live under `layers/<i>/`.
  """

  def __init__(self, config: ModelConfig, num_layers: int, *,
               rngs: nnx.Rngs):
    self.layers = nnx.List(
        [LanguageBlock(config, rngs=rngs) for _ in range(num_layers)])
    # Static lookup table: language id -> group id.
    self.language_group_ids = tuple(config.language_group_ids)
    self.num_language_groups = config.num_language_groups
    self.remat = config.remat
    self.grouped_matmul = config.grouped_matmul
    self.activation_dtype = config.activation_dtype

  def routing(self, language_ids: jax.Array) -> grouped.GroupRouting:
    """Routes the flattened [B, L] language ids to their groups.

    Language ids outside the table map to no group: the blocks then add
    zero to those tokens, which pass through unchanged.
    """
    table = jnp.asarray(self.language_group_ids, dtype=jnp.int32)
    group_ids = jnp.take(table, language_ids.reshape(-1), mode="fill",
                         fill_value=-1)
    return grouped.make_routing(group_ids, self.num_language_groups,
                                self.grouped_matmul)

  def __call__(self, x: jax.Array, language_ids: jax.Array,
               segment_ids: jax.Array, positions: jax.Array) -> jax.Array:
    """Maps [B, L, D] to [B, L, D], routing token t by `language_ids[t]`.

    With a mesh in context whose axes split the batch, each device routes
    its own rows inside `jax.shard_map`, with the blocks' weights gathered
    (split over `tensor` where that axis divides the heads and MLP width):
    a routing over the global rows would make XLA gather every token onto
    every device.
    """
    if not self.layers:
      return x
    mesh = jax.sharding.get_abstract_mesh()
    axes = sharding.token_axes(mesh)
    if not axes or x.shape[0] % math.prod(mesh.shape[a] for a in axes):
      return self._forward(x, language_ids, segment_ids, positions)
    graphdef, state = nnx.split(self)
    tensor = self._tensor_axis(mesh)
    weight_specs = jax.tree.map(
        functools.partial(_weight_spec, tensor_axis=tensor), state,
        is_leaf=lambda v: isinstance(v, nnx.Variable))
    # Every device gathers all G groups' weights (its tensor share of them).
    # The grouped matmuls cast them to the compute dtype anyway, so they are
    # cast first: the gather and the reduction of their gradients then move
    # the compute dtype (bfloat16 rather than float32 in the 8x7B runs).
    state = jax.tree.map(self._cast_grouped, state)

    def local(state, x, language_ids, segment_ids, positions):
      return nnx.merge(graphdef, state)._forward(
          x, language_ids, segment_ids, positions, tensor_axis=tensor)

    rows = P(axes)
    return jax.shard_map(local, mesh=mesh,
                         in_specs=(weight_specs, rows, rows, rows, rows),
                         out_specs=rows)(state, x, language_ids, segment_ids,
                                         positions)

  def _tensor_axis(self, mesh) -> str | None:
    """Returns 'tensor' if it splits the heads, KV heads and MLP width."""
    block = self.layers[0]
    sizes = (block.query.shape[2], block.key.shape[2], block.gate.shape[2])
    # The axis divides all three exactly when it divides their gcd.
    return sharding.tensor_axis_for(mesh, math.gcd(*sizes))

  def _cast_grouped(self, value: jax.Array) -> jax.Array:
    """Casts per-group matrices ([G, in, ...]) to the compute dtype."""
    if value.ndim >= 3 and jnp.issubdtype(value.dtype, jnp.floating):
      return value.astype(self.activation_dtype)
    return value

  def _forward(self, x, language_ids, segment_ids, positions,
               tensor_axis=None):
    """Runs the blocks on [B, L, D] with one routing of all B * L rows."""
    routing = self.routing(language_ids)

    def apply(block, x, routing, segment_ids, positions):
      return block(x, routing, segment_ids, positions, tensor_axis)

    apply_block = remat_layer(apply, self.remat)
    for layer in self.layers:
      x = constrain(apply_block(layer, x, routing, segment_ids, positions),
                    ACTIVATION)
    return x


# Logical axes of the block parameters that tensor parallelism splits.
_TENSOR_SPLIT = ("heads", "kv_heads", "mlp")


def _weight_spec(variable: nnx.Variable, tensor_axis: str | None) -> P:
  """Returns the shard_map spec of a block parameter: whole but for `tensor`."""
  names = variable.get_metadata().get("out_sharding") or ()
  if tensor_axis is None:
    return P()
  return P(*(tensor_axis if name in _TENSOR_SPLIT else None for name in names))
