"""Tests for PhaseConfig validation and the strict hand-off between phases."""

import logging

import gin
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from sutra_jax import gin_utils
from sutra_jax import partitioning
from sutra_jax.errors import CheckpointError, ConfigError
from sutra_jax.training import checkpoints
from sutra_jax.training import phases
from sutra_jax.training.phases import PhaseConfig
from sutra_jax.training.train_step import TrainState


@pytest.mark.parametrize("field,value", [
    ("num_steps", 0),
    ("num_steps", -5),
    ("batch_size", -1),
    ("sequence_length", 0),
    ("checkpoint_every", 0),
    ("log_every", -2),
    ("router_z_loss_weight", -0.1),
])
def test_phase_rejects_invalid_value(field, value):
  with pytest.raises(ConfigError, match=f"PhaseConfig.{field} = {value}"):
    PhaseConfig(**{field: value})


def test_phase_rejects_unknown_initialisation():
  with pytest.raises(ConfigError, match="'random'.*fresh, zeros, extend"):
    PhaseConfig(new_parameters={"^lm_head/": "random"})


def test_phase_rejects_single_string_pattern():
  with pytest.raises(ConfigError, match=r"\('\^core/',\)"):
    PhaseConfig(trainable="^core/")


def test_unset_macro_is_named():
  binding = "PhaseConfig.init_from = %CONCEPT_RUN_DIR"
  with pytest.raises(ConfigError, match="CONCEPT_RUN_DIR"):
    gin_utils.parse_config([], [binding])

  # Without finalising, gin reports the macro only when the phase is built.
  gin.clear_config()
  gin.parse_config([binding])
  with pytest.raises(ConfigError, match="gin macro CONCEPT_RUN_DIR is not "
                     "set"):
    phases.phase_from_gin()


def test_phase_gin_files_parse():
  bindings = ["VOCABULARY = 'spm.model'", "CONCEPT_RUN_DIR = 'a'",
              "LANGUAGE_RUN_DIR = 'b'"]
  for name in ("concept", "language", "alignment"):
    gin.clear_config()
    gin_utils.parse_config([f"phases/{name}.gin"], bindings)
    assert gin.query_parameter("PhaseConfig.name") == name
  assert gin.query_parameter("PhaseConfig.trainable") == (".*",)


def test_add_language_gin_declares_the_new_group():
  gin_utils.parse_config(["runs/demo.gin", "phases/add_language.gin"], [])
  assert gin.query_parameter("PhaseConfig.new_language_groups") == {
      "gu": "hi"}
  assert gin.query_parameter("language_table.languages")[-1] == "gu"
  assert gin.query_parameter("LossConfig.consistency") == "infonce"


@pytest.mark.parametrize("name", ["concept", "language", "alignment", "add",
                                  "joint"])
def test_experiment_gin_files_parse(name):
  gin_utils.parse_config([f"experiments/add_language/{name}.gin"], [])
  assert gin.query_parameter("PhaseConfig.num_steps") in (150, 450)


def test_demo_run_file_sets_every_macro():
  for name in ("concept", "language", "alignment"):
    gin.clear_config()
    gin_utils.parse_config(["runs/demo.gin", f"phases/{name}.gin"], [])
    assert gin.query_parameter("PhaseConfig.num_steps") == 200
    assert gin.query_parameter("ModelConfig.d_model") == 128


SHAPES = {"embed/embedding": (8, 4), "core/w": (4, 4), "lm_head/kernel": (4, 8)}


def test_plan_restores_matching_parameters():
  plan = phases.plan_hand_off(SHAPES, SHAPES, (), "ckpt")

  assert sorted(plan.restored) == sorted(SHAPES)
  assert not plan.initialised
  assert not plan.unused


def test_plan_names_missing_parameter():
  saved = {k: v for k, v in SHAPES.items() if k != "lm_head/kernel"}

  with pytest.raises(CheckpointError, match=r"not in ckpt: lm_head/kernel\. "
                     "Declare them in PhaseConfig.new_parameters"):
    phases.plan_hand_off(SHAPES, saved, (), "ckpt")


def test_plan_names_shape_mismatch():
  saved = dict(SHAPES, **{"embed/embedding": (6, 4)})

  with pytest.raises(CheckpointError, match=r"embed/embedding \(checkpoint "
                     r"\(6, 4\), model \(8, 4\)\)"):
    phases.plan_hand_off(SHAPES, saved, (), "ckpt")


def test_plan_initialises_declared_parameters():
  saved = {k: v for k, v in SHAPES.items() if k != "lm_head/kernel"}
  saved["embed/embedding"] = (6, 4)
  saved["old/w"] = (2, 2)

  plan = phases.plan_hand_off(
      SHAPES, saved, (("^lm_head/", "fresh"), ("^embed/", "extend")), "ckpt")

  assert plan.restored == ("core/w",)
  assert plan.initialised == {"embed/embedding": "extend",
                              "lm_head/kernel": "fresh"}
  assert plan.unused == ("old/w",)


def test_plan_rejects_pattern_matching_nothing():
  with pytest.raises(ConfigError,
                     match=r"'\^decoder/'.*matches no parameter"):
    phases.plan_hand_off(SHAPES, SHAPES, (("^decoder/", "fresh"),), "ckpt")


def test_plan_rejects_extend_of_other_columns():
  saved = dict(SHAPES, **{"embed/embedding": (8, 2)})

  with pytest.raises(CheckpointError, match="only adds rows"):
    phases.plan_hand_off(SHAPES, saved, (("^embed/", "extend"),), "ckpt")


def _save_run(run_dir, params, mesh, step=3, num_steps=3):
  params = jax.device_put(params, NamedSharding(mesh, P()))
  state = TrainState(step=jnp.int32(step), params=params,
                     opt_state={"count": jnp.zeros((), jnp.int32)},
                     rng=jnp.zeros((2,), jnp.uint32))
  with checkpoints.Checkpointer(run_dir, save_every=1, keep=1) as saver:
    saver.save(state, checkpoints.Progress(step, step, "previous",
                                           num_steps), force=True)


def test_restore_previous_phase_restores_and_initialises(tmp_path, caplog):
  mesh = partitioning.make_mesh()
  rng = np.random.default_rng(0)
  old = {"embed": {"embedding": rng.normal(size=(6, 4)).astype(np.float32)},
         "core": {"w": rng.normal(size=(4, 4)).astype(np.float32)}}
  _save_run(tmp_path, old, mesh)
  replicated = NamedSharding(mesh, P())
  fresh = jax.device_put(
      {"embed": {"embedding": np.full((8, 4), 7.0, np.float32)},
       "core": {"w": np.zeros((4, 4), np.float32)},
       "gate": {"w": np.full((4,), 5.0, np.float32)},
       "lm_head": {"kernel": np.full((4, 8), 2.0, np.float32)}}, replicated)

  with caplog.at_level(logging.INFO):
    params = phases.restore_previous_phase(
        fresh, str(tmp_path),
        (("^embed/", "extend"), ("^gate/", "zeros"), ("^lm_head/", "fresh")),
        mesh)

  np.testing.assert_array_equal(params["core"]["w"], old["core"]["w"])
  np.testing.assert_array_equal(params["embed"]["embedding"][:6],
                                old["embed"]["embedding"])
  np.testing.assert_array_equal(params["embed"]["embedding"][6:], 7.0)
  np.testing.assert_array_equal(params["gate"]["w"], 0.0)
  np.testing.assert_array_equal(params["lm_head"]["kernel"], 2.0)
  assert "Restored 1 parameters" in caplog.text
  assert "Initialised lm_head/kernel (4, 8): fresh" in caplog.text
  assert "Initialised embed/embedding (8, 4): extend" in caplog.text


def test_restore_previous_phase_rejects_unfinished_run(tmp_path):
  mesh = partitioning.make_mesh()
  _save_run(tmp_path, {"w": np.zeros(2, np.float32)}, mesh, step=3,
            num_steps=10)

  with pytest.raises(CheckpointError, match="stopped at step 3 of 10"):
    phases.restore_previous_phase({"w": jnp.zeros(2)}, str(tmp_path), (),
                                  mesh)


def test_restore_previous_phase_rejects_empty_run(tmp_path):
  with pytest.raises(CheckpointError, match="has no checkpoint"):
    phases.restore_previous_phase({"w": jnp.zeros(2)}, str(tmp_path), (),
                                  partitioning.make_mesh())
