"""A checkpoint written on one mesh restores onto another, bit for bit.

The run trains on 8 'data' devices, then its checkpoint is restored onto
2 'data' x 4 'expert' devices, where the expert weights are split across
the 'expert' axis, and training continues there.
"""

import dataclasses
import re

import gin
import jax
import numpy as np
import pytest

from sutra_jax import distributed
from sutra_jax import languages
from sutra_jax import partitioning
from sutra_jax.training import checkpoints
from sutra_jax.training import trainer
from sutra_jax.training.optimizers import OptimizerConfig
from sutra_jax.training.phases import PhaseConfig
from tests.training.training_testlib import TINY_BINDINGS, SyntheticData

PHASE = PhaseConfig(
    name="test", mixture="synthetic", num_steps=2, batch_size=8,
    sequence_length=16, checkpoint_every=2, log_every=1,
    optimizer=OptimizerConfig(peak_learning_rate=1e-2, warmup_steps=1,
                              decay_steps=6))


def _restore(run_dir, step, mesh_bindings):
  """Restores `step` onto the mesh that `mesh_bindings` select."""
  gin.clear_config()
  gin.parse_config([TINY_BINDINGS, *mesh_bindings])
  table = languages.language_table()
  config = trainer.model_config_for_phase(table, PHASE,
                                          vocab_from_mixture=False)
  mesh = distributed.make_mesh()
  setup = trainer._Setup.build(PHASE, config, mesh,  # pylint: disable=protected-access
                               partitioning.axis_rules())
  with checkpoints.Checkpointer(run_dir, save_every=1, keep=None) as ckpt:
    state, _ = ckpt.restore(step, setup.abstract_state)
  return mesh, state


def _leaves(tree):
  return {jax.tree_util.keystr(path): leaf for path, leaf in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.slow
def test_restore_onto_data_expert_mesh(tmp_path):
  run_dir = str(tmp_path / "run")
  gin.parse_config(TINY_BINDINGS)
  trainer.train(run_dir, PHASE, dataset_fn=SyntheticData())

  data_mesh, saved = _restore(run_dir, 2, [])
  expert_mesh, moved = _restore(run_dir, 2, ["make_mesh.data = 2",
                                             "make_mesh.expert = 4"])

  assert dict(data_mesh.shape)["data"] == 8
  assert dict(expert_mesh.shape)["expert"] == 4
  saved_leaves, moved_leaves = _leaves(saved), _leaves(moved)
  assert saved_leaves.keys() == moved_leaves.keys()
  for name, value in saved_leaves.items():
    np.testing.assert_array_equal(np.asarray(moved_leaves[name]),
                                  np.asarray(value), err_msg=name)
  expert_specs = [leaf.sharding.spec for name, leaf in
                  _leaves(moved.params).items()
                  if name.startswith("['core']") and
                  re.search(r"\['(gate|up|down)'\]$", name)]
  assert expert_specs and all("expert" in tuple(spec)
                              for spec in expert_specs), expert_specs

  # The trainer itself resumes on the new mesh and takes a step.
  result = trainer.train(run_dir, dataclasses.replace(PHASE, num_steps=3),
                         dataset_fn=SyntheticData())
  assert result.steps_run == 1
  assert checkpoints.latest_step(run_dir) == 3
