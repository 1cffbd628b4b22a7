"""The loss and the jitted, sharded train step.

Shapes: B global batch, L sequence length, V vocabulary, N languages in the
`LanguageTable`.

The model is split into a static `nnx.GraphDef` and a nested dict of
parameters, and the step merges them inside `jax.jit` (`nnx.merge`). The
compiled function therefore takes plain arrays, with their shardings given as
`NamedSharding`s.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import flax.struct
from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np
import optax

from sutra_jax.errors import DataError
from sutra_jax.training import guard
from sutra_jax.training import losses
from sutra_jax.training import optimizers

PyTree = Any

# Features of a batch that the train step reads, all [B, L]. See
# `sutra_jax.data.pipeline.get_dataset`.
BATCH_FEATURES = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
    "encoder_language_ids",
    "decoder_language_ids",
    "decoder_example_kinds",
    "decoder_pair_ids",
)
# Features that a batch may leave out; they are then all 0 (every token is
# text, no parallel pairs), as in batches of older pipelines.
OPTIONAL_FEATURES = ("decoder_example_kinds", "decoder_pair_ids")


@flax.struct.dataclass
class TrainState:
  """Everything the train step updates, as one pytree.

  Attributes:
    step: int32 [] optimizer steps taken in the phase.
    params: nested dict of parameters (the layout of `nnx.to_pure_dict`).
    opt_state: the optax state of `Optimizer.tx`.
    rng: uint32 [2] base PRNG key data. The step folds the step number into
      it for stochastic layers; the current model is deterministic and does
      not read it.
  """

  step: jax.Array
  params: PyTree
  opt_state: optax.OptState
  rng: jax.Array


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weights of the loss terms and of the auxiliary MoE losses."""

  load_balancing: float = 0.01
  router_z: float = 0.001
  terms: losses.LossConfig = losses.LossConfig()


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                  language_ids: jax.Array, num_languages: int
                  ) -> dict[str, jax.Array]:
  """Computes the weighted next-token cross-entropy, overall and by language.

  Args:
    logits: [B, L, V] float32 logits.
    targets: [B, L] int32 target token ids.
    weights: [B, L] loss weights; 0 for padding and unscored tokens.
    language_ids: [B, L] language id of each target token.
    num_languages: N, the size of the language table.

  Returns:
    `cross_entropy`: sum of weighted token losses / sum of weights (0 when
      all weights are 0);
    `weight_sum`: sum of weights;
    `language_loss_sum`: [N] sum of weighted token losses per language;
    `language_weight_sum`: [N] sum of weights per language.
  """
  weights = weights.astype(jnp.float32)
  token_loss = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), targets)
  weighted = token_loss * weights
  weight_sum = jnp.sum(weights)
  loss = jnp.where(weight_sum > 0,
                   jnp.sum(weighted) / jnp.maximum(weight_sum, 1e-9), 0.0)
  ids = language_ids.reshape(-1)
  return {
      "cross_entropy": loss,
      "weight_sum": weight_sum,
      "language_loss_sum": jax.ops.segment_sum(
          weighted.reshape(-1), ids, num_segments=num_languages),
      "language_weight_sum": jax.ops.segment_sum(
          weights.reshape(-1), ids, num_segments=num_languages),
  }


def expert_counts_by_language(slot_counts: jax.Array, language_ids: jax.Array,
                              num_languages: int) -> jax.Array:
  """Sums the routed slots of each core layer and expert by token language.

  Args:
    slot_counts: [num_core_layers, B, L, E] `expert_slot_counts` from the
      model's aux outputs, 0 for padding.
    language_ids: [B, L] language id of each input token.
    num_languages: N, the size of the language table.

  Returns:
    [N, num_core_layers, E] float32 counts of routed slots. Row n, layer i
    sums to k times the real tokens of language n.
  """
  layers, batch, length, experts = slot_counts.shape
  by_token = jnp.moveaxis(slot_counts, 0, 2).reshape(batch * length, layers,
                                                     experts)
  return jax.ops.segment_sum(by_token, language_ids.reshape(-1),
                             num_segments=num_languages)


def run_model(model, batch: Mapping[str, jax.Array]):
  """Calls a `SutraModel`-like module on the features of a batch."""
  return model(
      batch["decoder_input_tokens"],
      encoder_language_ids=batch["encoder_language_ids"],
      decoder_language_ids=batch["decoder_language_ids"],
      segment_ids=batch["decoder_segment_ids"],
      positions=batch["decoder_positions"])


def compute_loss(params: PyTree, graphdef: nnx.GraphDef,
                 batch: Mapping[str, jax.Array], loss_weights: LossWeights,
                 num_languages: int) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Runs the model and returns (objective, metrics).

  The objective is the weighted sum of the next-token, translation and
  concept-consistency terms (`losses.weighted_terms`) plus the weighted
  load-balancing and router z-losses of the concept core (averages over its
  layers). Besides the losses, the metrics contain
  `layer_load_balancing_loss` [num_core_layers], `dropped_fraction` (the
  share of routed copies of real tokens that a capacity-limited dispatch
  dropped), `expert_load` [num_core_layers, E] and `language_expert_counts`
  [N, num_core_layers, E] (see `expert_counts_by_language`).
  """
  model = nnx.merge(graphdef, params)
  output = run_model(model, batch)
  metrics = cross_entropy(output.logits, batch["decoder_target_tokens"],
                          batch["decoder_loss_weights"],
                          batch["decoder_language_ids"], num_languages)
  token_loss = optax.softmax_cross_entropy_with_integer_labels(
      output.logits.astype(jnp.float32), batch["decoder_target_tokens"])
  terms_loss, terms = losses.weighted_terms(token_loss, output.core_hidden,
                                            batch, loss_weights.terms)
  metrics.update(terms)
  load_balancing = output.aux["load_balancing_loss"]
  router_z = output.aux["router_z_loss"]
  loss = (terms_loss +
          loss_weights.load_balancing * load_balancing +
          loss_weights.router_z * router_z)
  metrics.update(loss=loss, load_balancing_loss=load_balancing,
                 router_z_loss=router_z,
                 layer_load_balancing_loss=output.aux[
                     "layer_load_balancing_loss"],
                 dropped_fraction=_dropped_fraction(
                     output.aux["dropped_slots"], batch,
                     model.config.experts_per_token),
                 expert_load=output.aux["expert_load"])
  # The core routes the input token at each position, so its language is
  # the encoder language id. It differs from the decoder id at the
  # source-to-target boundary of a translation example.
  metrics["language_expert_counts"] = jax.lax.stop_gradient(
      expert_counts_by_language(output.aux["expert_slot_counts"],
                                batch["encoder_language_ids"], num_languages))
  return loss, metrics


def _dropped_fraction(dropped_slots: jax.Array, batch, k: int) -> jax.Array:
  """Fraction of the real tokens' routed copies that dispatch dropped.

  Args:
    dropped_slots: [num_moe_layers] dropped copies per layer.
    batch: the batch, whose non-zero segment ids mark real tokens.
    k: experts per token.
  """
  real = jnp.sum(batch["decoder_segment_ids"] != 0)
  copies = jnp.maximum(real, 1) * k * max(dropped_slots.shape[0], 1)
  return jnp.sum(dropped_slots) / copies


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *,
               graphdef: nnx.GraphDef, optimizer: optimizers.Optimizer,
               loss_weights: LossWeights,
               num_languages: int) -> tuple[TrainState, dict[str, jax.Array]]:
  """Takes one optimizer step. This is the body that `make_train_step` jits.

  A step whose loss or gradient norm is not finite is skipped: the returned
  state has the same parameters and optimizer state, `step` still advances,
  and `metrics["skipped"]` is 1 (else 0).
  """

  def objective(params):
    # Frozen parameters get no gradient, so XLA skips their weight-gradient
    # matmuls; backpropagation through them to trainable layers still runs.
    params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p),
                          params, optimizer.trainable)
    return compute_loss(params, graphdef, batch, loss_weights, num_languages)

  grads, metrics = jax.grad(objective, has_aux=True)(state.params)
  grad_norm = optimizers.global_norm(grads, optimizer.trainable)

  def update(_):
    updates, opt_state = optimizer.tx.update(grads, state.opt_state,
                                             state.params)
    return (optimizers.apply_updates(state.params, updates,
                                     optimizer.trainable), opt_state)

  # A non-finite loss or gradient would poison the weights and the AdamW
  # moments for good, so such a step keeps both unchanged (see `guard`).
  finite = guard.step_is_finite(metrics["loss"], grad_norm)
  params, opt_state = jax.lax.cond(
      finite, update, lambda _: (state.params, state.opt_state), None)
  metrics.update(
      learning_rate=optimizer.schedule(state.step),
      grad_norm=grad_norm,
      skipped=jnp.logical_not(finite).astype(jnp.int32))
  new_state = TrainState(step=state.step + 1, params=params,
                         opt_state=opt_state, rng=state.rng)
  return new_state, metrics


def make_train_step(graphdef: nnx.GraphDef, optimizer: optimizers.Optimizer,
                    *, mesh: Mesh, state_shardings: TrainState,
                    batch_sharding: NamedSharding, loss_weights: LossWeights,
                    num_languages: int) -> Callable:
  """Returns the jitted step `(state, batch) -> (state, metrics)`.

  Args:
    graphdef: the model's graph definition from `nnx.split`.
    optimizer: the phase's optimizer.
    mesh: the device mesh.
    state_shardings: a `TrainState` of `NamedSharding`s.
    batch_sharding: the sharding of every [B, L] batch feature.
    loss_weights: weights of the auxiliary losses.
    num_languages: size of the language table.

  The input state is donated: its buffers are reused for the output, so the
  caller must not read the old state after the call. Metrics come back
  replicated.
  """
  step = functools.partial(
      train_step, graphdef=graphdef, optimizer=optimizer,
      loss_weights=loss_weights, num_languages=num_languages)
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(
      step,
      in_shardings=(state_shardings,
                    {name: batch_sharding for name in BATCH_FEATURES}),
      out_shardings=(state_shardings, replicated),
      donate_argnums=0)


def device_batch(batch: Mapping[str, np.ndarray],
                 sharding: NamedSharding) -> dict[str, jax.Array]:
  """Places this process's rows of a batch onto the mesh as global arrays.

  Every process passes its own [B / processes, L] rows; the result is the
  [B, L] global batch. Features other than `BATCH_FEATURES` are dropped,
  and missing `OPTIONAL_FEATURES` are filled with zeros.

  Raises:
    DataError: a required feature of `BATCH_FEATURES` is missing.
  """
  missing = [name for name in BATCH_FEATURES
             if name not in batch and name not in OPTIONAL_FEATURES]
  if missing:
    raise DataError(f"batch is missing the features {', '.join(missing)}; "
                    f"it has {', '.join(sorted(batch))}. Use a dataset from "
                    "sutra_jax.data.pipeline.get_dataset")
  arrays = {}
  rows = np.shape(batch["decoder_segment_ids"])
  for name in BATCH_FEATURES:
    value = np.asarray(batch[name]) if name in batch else np.zeros(rows)
    if name == "decoder_loss_weights":
      value = value.astype(np.float32)
    else:
      value = value.astype(np.int32)
    arrays[name] = jax.make_array_from_process_local_data(sharding, value)
  return arrays


def train_state_shardings(mesh: Mesh, param_shardings: PyTree,
                          abstract_opt_state: PyTree) -> TrainState:
  """Builds the `TrainState` of shardings for given parameter shardings.

  Optimizer moments (AdamW's `mu` and `nu`) have the parameter tree's layout,
  so a leaf whose key path ends in a parameter's path takes that parameter's
  sharding, provided the sharding divides the leaf's shape. Counters and
  other leaves are replicated.

  Args:
    mesh: the device mesh.
    param_shardings: nested dict of `NamedSharding`s shaped like the params.
    abstract_opt_state: `jax.eval_shape(optimizer.tx.init, params)`.
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  by_path = optimizers.flatten_params(param_shardings)

  def sharding_of(key_path, leaf):
    names = [optimizers.path_name([k]) for k in key_path]
    # Try the longest suffix first: `.../mu/core/layers/0/w` ends in the
    # parameter path `core/layers/0/w`.
    for start in range(len(names)):
      sharding = by_path.get("/".join(names[start:]))
      if sharding is not None:
        return sharding if _fits(sharding, leaf.shape) else replicated
    return replicated

  opt_shardings = jax.tree_util.tree_map_with_path(sharding_of,
                                                   abstract_opt_state)
  return TrainState(step=replicated, params=param_shardings,
                    opt_state=opt_shardings, rng=replicated)


def _fits(sharding: NamedSharding, shape: tuple[int, ...]) -> bool:
  """Checks whether `sharding` splits an array of `shape` evenly."""
  if len(sharding.spec) > len(shape):
    return False
  for size, axes in zip(shape, sharding.spec):
    if axes is None:
      continue
    axes = (axes,) if isinstance(axes, str) else axes
    if size % math.prod(sharding.mesh.shape[a] for a in axes):
      return False
  return True
