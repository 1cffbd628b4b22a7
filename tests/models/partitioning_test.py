"""Tests for meshes, logical axis rules and sharded model creation."""

from flax import nnx
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sutra_jax import partitioning
from sutra_jax.errors import ConfigError
from sutra_jax.models.config import ModelConfig
from sutra_jax.models.sutra import SutraModel

TOL = dict(rtol=1e-5, atol=1e-5)

# Sizes chosen so that every sharded axis divides its mesh axes: 8 experts on
# 4 expert devices, 4 heads and 32-wide MLPs on 4 tensor devices.
CONFIG = ModelConfig(
    vocab_size=64, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8,
    mlp_dim=32, expert_mlp_dim=32, num_experts=8, experts_per_token=2,
    num_encoder_layers=1, num_core_layers=1, num_decoder_layers=1,
    num_language_groups=3, language_group_ids=(0, 1, 2, 1))


def _specs(model):
  return {"/".join(map(str, path)): var[...].sharding.spec
          for path, var in nnx.to_flat_state(nnx.state(model))}


def test_make_mesh_fills_data_axis():
  mesh = partitioning.make_mesh(expert=4)

  assert mesh.axis_names == ("data", "fsdp", "expert", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "expert": 4, "tensor": 1}


def test_make_mesh_on_a_device_subset():
  mesh = partitioning.make_mesh(data=2, tensor=2, devices=jax.devices()[:4])

  assert mesh.devices.size == 4
  assert dict(mesh.shape)["tensor"] == 2


@pytest.mark.parametrize("sizes, message", [
    (dict(expert=3), "does not divide the 8 devices"),
    (dict(data=2, tensor=2), "needs 4 devices but 8 are available"),
    (dict(data=-1, fsdp=-1), "at most one -1"),
    (dict(tensor=0), "positive sizes"),
])
def test_make_mesh_rejects_bad_shapes(sizes, message):
  with pytest.raises(ConfigError, match=message):
    partitioning.make_mesh(**sizes)


def test_logical_spec_maps_rules_and_drops_unit_axes():
  mesh = partitioning.make_mesh(data=2, expert=4)

  spec = partitioning.logical_to_mesh_spec(
      ("experts", "embed", "mlp"), (8, 32, 32), mesh)

  # 'embed' maps to 'fsdp' and 'mlp' to 'tensor', both of size 1 here.
  assert spec == P("expert", None, None)


def test_logical_spec_replicates_indivisible_dimensions():
  mesh = partitioning.make_mesh(data=2, tensor=4)

  spec = partitioning.logical_to_mesh_spec(
      ("embed", "kv_heads", "head_dim"), (32, 2, 8), mesh)
  batch = partitioning.logical_to_mesh_spec(("batch", "length"), (6, 5),
                                            mesh)

  assert spec == P(None, None, None)
  assert batch == P("data", None)


def test_logical_spec_uses_each_mesh_axis_once():
  mesh = partitioning.make_mesh(data=2, tensor=4)
  rules = (("heads", "tensor"), ("mlp", "tensor"), ("mlp", "data"))

  spec = partitioning.logical_to_mesh_spec(("heads", "mlp"), (4, 8), mesh,
                                           rules)

  assert spec == P("tensor", "data")


def test_batch_sharding_splits_batch_only():
  mesh = partitioning.make_mesh(data=2, expert=4)

  assert partitioning.batch_sharding(mesh).spec == P(("data", "expert"), None)
  assert partitioning.batch_sharding(mesh, batch_size=2).spec == P("data",
                                                                   None)


def test_state_shardings_of_abstract_state():
  mesh = partitioning.make_mesh(fsdp=2, expert=2, tensor=2)
  abstract = nnx.eval_shape(lambda: SutraModel(CONFIG, rngs=nnx.Rngs(0)))

  shardings = partitioning.state_shardings(mesh, nnx.state(abstract))

  specs = {"/".join(map(str, path)): var.get_value().spec
           for path, var in nnx.to_flat_state(shardings)}
  assert specs["core/layers/0/moe/gate"] == P("expert", "fsdp", "tensor")
  assert specs["core/layers/0/attention/query"] == P("fsdp", "tensor", None)
  assert specs["encoder/layers/0/down"] == P(None, "tensor", "fsdp")
  assert specs["embed/embedding"] == P("tensor", "fsdp")
  assert specs["final_norm/scale"] == P(None)


def test_axis_rules_reads_gin_binding():
  import gin  # pylint: disable=g-import-not-at-top

  gin.parse_config("axis_rules.rules = [('embed', None), ('mlp', "
                   "['tensor', 'fsdp'])]")

  assert partitioning.axis_rules() == (("embed", None),
                                       ("mlp", ("tensor", "fsdp")))


def test_rules_gin_file_equals_default_rules():
  import gin  # pylint: disable=g-import-not-at-top
  from sutra_jax import gin_utils  # pylint: disable=g-import-not-at-top

  gin.clear_config()
  gin_utils.parse_config(["mesh/rules.gin"], [], finalize=False)

  assert partitioning.axis_rules() == tuple(partitioning.DEFAULT_RULES)
  gin.clear_config()


@pytest.mark.parametrize("gin_file,shape,dispatch", [
    ("mesh/data.gin", (8, 1, 1, 1), "dropless"),
    ("mesh/fsdp.gin", (1, 8, 1, 1), "dropless"),
    ("mesh/expert_parallel.gin", (2, 1, 4, 1), "expert_parallel"),
    ("mesh/expert_tensor.gin", (2, 1, 2, 2), "expert_parallel"),
])
def test_mesh_gin_files_build_meshes(gin_file, shape, dispatch):
  import gin  # pylint: disable=g-import-not-at-top
  from sutra_jax import gin_utils  # pylint: disable=g-import-not-at-top

  gin.clear_config()
  gin_utils.parse_config(["models/tiny.gin", gin_file], [], finalize=False)

  mesh = partitioning.make_mesh()
  config = ModelConfig(num_language_groups=1, language_group_ids=(0,))
  assert tuple(mesh.shape.values()) == shape
  assert config.moe_dispatch == dispatch
  gin.clear_config()


@pytest.fixture(scope="module")
def sharded_model():
  mesh = partitioning.make_mesh(data=2, expert=4)
  return partitioning.create_sharded_model(CONFIG, mesh, rngs_seed=0)


def _forward(model, tokens, languages, segment_ids, positions):
  return model(tokens, encoder_language_ids=languages,
               decoder_language_ids=languages, segment_ids=segment_ids,
               positions=positions)


def _batch(batch=8, length=6):
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, CONFIG.vocab_size, (batch, length))
  languages = rng.integers(0, 4, (batch, length))
  # Half the rows are packed with two segments and end in padding.
  segment_ids = np.ones((batch, length), np.int32)
  segment_ids[::2, 3:] = 2
  segment_ids[::2, -1] = 0
  positions = np.tile(np.arange(length), (batch, 1))
  positions[::2, 3:] -= 3
  return tuple(np.asarray(a, np.int32)
               for a in (tokens, languages, segment_ids, positions))


def test_create_sharded_model_places_parameters(sharded_model):
  specs = _specs(sharded_model)

  assert specs["core/layers/0/moe/gate"] == P("expert", None, None)
  assert specs["core/layers/0/moe/router/kernel"] == P(None, "expert")
  assert specs["encoder/layers/0/query"] == P(None, None, None, None)


def test_mesh_outputs_equal_single_device(sharded_model):
  inputs = _batch()
  graphdef, state = nnx.split(sharded_model)
  host_state = jax.device_get(state)
  single = nnx.merge(graphdef, jax.device_put(host_state, jax.devices()[0]))
  expected = nnx.jit(_forward)(single, *inputs)

  meshes = {"data=2,expert=4": partitioning.make_mesh(data=2, expert=4),
            "data=2,tensor=4": partitioning.make_mesh(data=2, tensor=4)}
  for name, mesh in meshes.items():
    shardings = partitioning.state_shardings(mesh, state)
    model = nnx.merge(graphdef, jax.device_put(host_state, shardings))
    batch = jax.device_put(inputs, partitioning.batch_sharding(mesh))

    out = nnx.jit(_forward)(model, *batch)

    np.testing.assert_allclose(out.logits, expected.logits, **TOL,
                               err_msg=name)
    np.testing.assert_allclose(out.core_hidden, expected.core_hidden, **TOL,
                               err_msg=name)
    for key in ("load_balancing_loss", "router_z_loss", "expert_load"):
      np.testing.assert_allclose(out.aux[key], expected.aux[key], **TOL,
                                 err_msg=f"{name}: {key}")
