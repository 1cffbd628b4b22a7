"""Multi-process start-up, multi-slice meshes and data shards.

JAX runs one process per host (multi-controller). Every process calls
`initialize` before it touches a device, then builds the same global mesh
with `make_mesh` and reads its own data shards (`local_data_shards`).

On TPU VMs `initialize(auto=True)` lets JAX find the coordinator and the
process ids from the TPU metadata. On a CPU host, several processes on
127.0.0.1 share one mesh through gloo collectives, which is how the tests
run a multi-host job without a pod (see `sutra_jax.launch.local_multihost`).
"""

import math
from typing import Sequence

from absl import logging
import gin
import jax
from jax.experimental import mesh_utils
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh

from sutra_jax import partitioning
from sutra_jax.errors import ConfigError


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               cpu_devices: int | None = None,
               auto: bool = False) -> None:
  """Joins this process to a multi-process JAX job, or does nothing.

  Must run before any JAX computation, because the device list is fixed
  when the backend starts.

  Args:
    coordinator_address: 'host:port' of process 0's coordination service.
    num_processes: processes in the job.
    process_id: this process's index in [0, num_processes).
    cpu_devices: host devices of this process on a CPU backend (sets
      `jax_num_cpu_devices`); None keeps JAX's default.
    auto: call `jax.distributed.initialize()` without arguments, for
      platforms where JAX detects them (TPU VMs, SLURM).

  Raises:
    ConfigError: an incomplete or inconsistent set of arguments.
  """
  if cpu_devices is not None:
    if cpu_devices < 1:
      raise ConfigError(f"--cpu_devices={cpu_devices} must be at least 1")
    jax.config.update("jax_num_cpu_devices", cpu_devices)
  explicit = (coordinator_address, num_processes, process_id)
  if auto:
    if any(v is not None for v in explicit):
      raise ConfigError("--distributed_auto takes no --coordinator_address, "
                        "--num_processes or --process_id; pass either")
    jax.distributed.initialize()
    return
  if all(v is None for v in explicit):
    return
  if any(v is None for v in explicit):
    raise ConfigError(
        "a multi-process run needs --coordinator_address, --num_processes "
        "and --process_id together; set all three or none")
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise ConfigError(f"--process_id={process_id} is not in [0, "
                      f"--num_processes={num_processes})")
  # Cross-process reductions of CPU arrays need a collectives library; gloo
  # ships with jaxlib. TPU and GPU backends ignore this option.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)
  logging.info("Process %d of %d joined %s", process_id, num_processes,
               coordinator_address)


@gin.configurable
def dcn_mesh_shape(data: int = 1, fsdp: int = 1, expert: int = 1,
                   tensor: int = 1) -> tuple[int, int, int, int]:
  """Returns the across-slice (DCN) size of each mesh axis.

  The in-slice (ICI) sizes are `partitioning.make_mesh`'s arguments; each
  mesh axis has size ICI x DCN. Slices talk over the data-centre network,
  which is much slower than ICI, so DCN usually carries only 'data' (one
  gradient all-reduce per step).

  Args:
    data: slices along 'data'.
    fsdp: slices along 'fsdp'.
    expert: slices along 'expert'.
    tensor: slices along 'tensor'.
  """
  shape = (data, fsdp, expert, tensor)
  if any(s < 1 for s in shape):
    raise ConfigError(f"invalid dcn_mesh_shape "
                      f"{dict(zip(partitioning.MESH_AXES, shape))}: sizes "
                      "must be at least 1")
  return shape


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the global mesh from the gin-bound ICI and DCN sizes.

  Without DCN sizes this is `partitioning.make_mesh`. With them, the devices
  are grouped by `slice_index` and each mesh axis is laid out ICI-major, so
  that the neighbours along an axis share a slice where possible.

  Args:
    devices: all devices of the job; `jax.devices()` by default.

  Raises:
    ConfigError: sizes that do not match the slices or devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  dcn = dcn_mesh_shape()
  num_slices = math.prod(dcn)
  if num_slices == 1:
    return partitioning.make_mesh(devices=devices)
  slices = {getattr(d, "slice_index", 0) for d in devices}
  if len(slices) != num_slices:
    raise ConfigError(
        f"dcn_mesh_shape multiplies to {num_slices} slices but the devices "
        f"come from {len(slices)}; make the DCN sizes multiply to the number "
        "of slices")
  per_slice = [d for d in devices if getattr(d, "slice_index", 0) == 0]
  ici = partitioning.make_mesh(devices=per_slice).devices.shape
  grid = mesh_utils.create_hybrid_device_mesh(
      ici, dcn, devices, allow_split_physical_axes=True)
  return Mesh(grid, partitioning.MESH_AXES,
              axis_types=(AxisType.Auto,) * len(partitioning.MESH_AXES))


@gin.configurable
def data_shard_count(num_shards: int = 0) -> int:
  """Returns how many shards the training data is read in.

  The global batch of a step is the concatenation, in shard order, of one
  sub-batch from each shard, and each process reads a contiguous run of
  shards. The batches therefore depend on the shard count but not on the
  process count: a run on 1 process with 2 shards sees the batches of a run
  on 2 processes, and can resume on either.

  Args:
    num_shards: shards to read; 0 reads one per process.
  """
  if num_shards < 0:
    raise ConfigError(f"data_shard_count.num_shards = {num_shards} must be "
                      "0 (one per process) or positive")
  return num_shards or jax.process_count()


def local_data_shards(batch_size: int) -> tuple[list[int], int]:
  """Returns (this process's shard indices, shard count).

  Args:
    batch_size: the global batch size, which the shards split.

  Raises:
    ConfigError: the shards do not divide among the processes or the batch.
  """
  num_shards = data_shard_count()
  processes = jax.process_count()
  if num_shards % processes:
    raise ConfigError(
        f"data_shard_count.num_shards = {num_shards} does not divide among "
        f"{processes} processes; use a multiple of {processes}")
  if batch_size % num_shards:
    raise ConfigError(
        f"PhaseConfig.batch_size = {batch_size} does not divide into "
        f"{num_shards} data shards; use a multiple of {num_shards}")
  per_process = num_shards // processes
  first = jax.process_index() * per_process
  return list(range(first, first + per_process)), num_shards


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name`; 1 process: no-op."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
