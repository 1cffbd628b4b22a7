"""Ahead-of-time compilation for a TPU topology, on any host.

`libtpu` can compile for TPU devices that this machine does not have:
`jax.experimental.topologies` describes a slice (chips, their coordinates,
slices over DCN) and `jax.jit(...).lower(...).compile()` on a mesh of those
abstract devices runs the real TPU compiler. The compiled executable gives
the per-device memory (`memory_analysis`) and XLA's cost model
(`cost_analysis`: FLOPs, bytes accessed and `optimal_seconds`, the
compiler's estimate of the step time). From those `aot_report` predicts
whether a step fits in HBM, its time, tokens/s and MFU.

Topology names follow Cloud TPU accelerator types: CHIP-N, where N counts
TensorCores for v4 and v5p (2 per chip) and chips for v5e and v6e, so
v5p-128 is 64 chips and v5e-256 is 256 chips. CHIP:AxB[xC] names a chip
grid directly.
"""

import dataclasses
import importlib.util
import math
import os
import re
from typing import Any, Mapping, Sequence

from sutra_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ChipSpec:
  """One TPU generation.

  Attributes:
    name: the generation as in accelerator types (v5p).
    hbm_bytes: HBM per chip.
    peak_bf16_flops: peak dense bfloat16 matmul FLOP/s per chip.
    hbm_bytes_per_second: HBM bandwidth per chip.
    cores_in_name: whether the N of CHIP-N counts TensorCores (2 per chip)
      rather than chips.
    grid_dims: 3 for a 3-D torus (v4, v5p), 2 for a 2-D one.
    source: where the numbers come from.
  """

  name: str
  hbm_bytes: int
  peak_bf16_flops: float
  hbm_bytes_per_second: float
  cores_in_name: bool
  grid_dims: int
  source: str


_GIB = 1 << 30
# The Cloud TPU system-architecture pages state HBM as "32 GiB" for v4 and
# as decimal "GB" for the later chips; decimal is used where the page says
# GB, which errs on the small side if GiB was meant.
CHIPS: Mapping[str, ChipSpec] = {
    "v4": ChipSpec("v4", 32 * _GIB, 275e12, 1200e9, True, 3,
                   "Cloud TPU docs, TPU v4 page (cloud.google.com/tpu/docs/"
                   "v4): 275 TFLOP/s bf16, 32 GiB HBM2 at 1200 GB/s per chip"),
    "v5e": ChipSpec("v5e", 16 * 10**9, 197e12, 819e9, False, 2,
                    "Cloud TPU docs, TPU v5e page (cloud.google.com/tpu/docs"
                    "/v5e): 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s per chip"),
    "v5p": ChipSpec("v5p", 95 * 10**9, 459e12, 2765e9, True, 3,
                    "Cloud TPU docs, TPU v5p page (cloud.google.com/tpu/docs"
                    "/v5p): 459 TFLOP/s bf16, 95 GB HBM2e at 2765 GB/s per chip"),
    "v6e": ChipSpec("v6e", 32 * 10**9, 918e12, 1638e9, False, 2,
                    "Cloud TPU docs, TPU v6e page (cloud.google.com/tpu/docs"
                    "/v6e): 918 TFLOP/s bf16, 32 GB HBM at 1638 GB/s per chip"),
}

# Slice shapes of the 2-D chips (v5e, v6e) by chip count, as offered.
_GRID_2D = {4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8),
            64: (8, 8), 128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A parsed topology name.

  Attributes:
    name: the name as given.
    chip: the chip's spec.
    grid: chips along each torus axis.
  """

  name: str
  chip: ChipSpec
  grid: tuple[int, ...]

  @property
  def num_chips(self) -> int:
    return math.prod(self.grid)

  @property
  def libtpu_name(self) -> str:
    """The name `jax.experimental.topologies.get_topology_desc` takes."""
    return f"{self.chip.name}:{'x'.join(map(str, self.grid))}"


def _unknown(name: str, reason: str) -> ConfigError:
  return ConfigError(
      f"unknown TPU topology {name!r} ({reason}): use CHIP-N such as v5p-128 or "
      f"v5e-256, or CHIP:AxB[xC], with CHIP one of {', '.join(CHIPS)}")


def _grid_3d(chips: int) -> tuple[int, int, int]:
  """Returns the 3-D slice shape of a power-of-two chip count.

  The shapes are 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, and so on, as
  Cloud TPU offers them for v4 and v5p.
  """
  grid = [2, 2, 1]
  while math.prod(grid) < chips:
    smallest = min(grid)
    # Grow the last of the smallest axes, so 2x2x2 becomes 2x2x4.
    index = max(i for i, size in enumerate(grid) if size == smallest)
    grid[index] *= 2
  return tuple(grid)


def parse_topology(name: str) -> Topology:
  """Parses CHIP-N or CHIP:AxB[xC].

  Raises:
    ConfigError: an unknown chip, a count that is not a slice size, or a
      malformed name.
  """
  match = re.fullmatch(r"(v\w+?)[-:](\S+)", name.strip().lower())
  if not match:
    raise _unknown(name, "expected CHIP-N or CHIP:AxB")
  chip_name, size = match.groups()
  chip = CHIPS.get(chip_name)
  if chip is None:
    raise _unknown(name, f"no chip {chip_name!r} in the table")
  if ":" in name:
    if not re.fullmatch(r"\d+(x\d+)+", size):
      raise _unknown(name, f"grid {size!r} is not AxB or AxBxC")
    grid = tuple(int(s) for s in size.split("x"))
    if len(grid) != chip.grid_dims or min(grid) < 1:
      raise _unknown(name, f"{chip.name} grids have {chip.grid_dims} axes")
    return Topology(name, chip, grid)
  if not size.isdigit() or int(size) < 1:
    raise _unknown(name, f"size {size!r} is not a positive count")
  count = int(size)
  chips = count // 2 if chip.cores_in_name else count
  if chip.cores_in_name and count % 2:
    raise _unknown(name, f"{chip.name}-N counts TensorCores, 2 per chip")
  if chip.grid_dims == 2:
    if chips not in _GRID_2D:
      raise _unknown(name, f"{chip.name} slices have "
                     f"{', '.join(map(str, _GRID_2D))} chips")
    return Topology(name, chip, _GRID_2D[chips])
  if chips < 4 or chips & (chips - 1):
    raise _unknown(name, f"{chip.name} slices of {chips} chips are not "
                   "offered by name; give the grid as CHIP:AxBxC")
  return Topology(name, chip, _grid_3d(chips))


def check_libtpu() -> None:
  """Raises ConfigError unless libtpu (the `[tpu]` extra) is installed."""
  if importlib.util.find_spec("libtpu") is None:
    raise ConfigError("sutra-aot needs libtpu to compile for TPUs: install "
                      "it with pip install 'sutra_jax[tpu]'")


def memory_summary(stats: Any) -> dict[str, int]:
  """Per-device bytes of a compiled executable's `memory_analysis()`.

  The total is what the executable holds at once on a device: arguments,
  outputs and temporaries, less outputs that reuse a donated argument's
  buffer (aliases), plus the program itself.
  """
  summary = {
      "argument_bytes": int(stats.argument_size_in_bytes),
      "output_bytes": int(stats.output_size_in_bytes),
      "alias_bytes": int(stats.alias_size_in_bytes),
      "temp_bytes": int(stats.temp_size_in_bytes),
      "generated_code_bytes": int(stats.generated_code_size_in_bytes),
  }
  summary["total_bytes"] = (summary["argument_bytes"] +
                            summary["output_bytes"] -
                            summary["alias_bytes"] + summary["temp_bytes"] +
                            summary["generated_code_bytes"])
  return summary


def cost_summary(cost: Mapping[str, float] | list) -> dict[str, float]:
  """FLOPs, bytes and time per device from `cost_analysis()`.

  For a program partitioned over N devices XLA analyses the per-device
  program, so these are per-device numbers.
  """
  if isinstance(cost, (list, tuple)):  # Older JAX returned one per program.
    cost = cost[0]
  return {
      "flops_per_device": float(cost.get("flops", 0.0)),
      "bytes_accessed_per_device": float(cost.get("bytes accessed", 0.0)),
      "optimal_seconds": float(cost.get("optimal_seconds", 0.0)),
  }


def _scanned_layers_cost(scanned: Mapping[str, float], num_layers: int,
                         no_layer: Mapping[str, float],
                         one_layer: Mapping[str, float]) -> dict[str, float]:
  """Counts the scanned core layers of a step `num_layers` times.

  XLA's cost analysis counts the body of a while loop once, whatever its
  trip count, so the step with `scan_core_layers` reports the cost of one
  core layer. One layer costs what an unrolled 1-layer step costs more than
  a step without core layers; the other num_layers - 1 layers are added.

  Args:
    scanned: `cost_summary` of the step with the scanned layers.
    num_layers: the loop's trip count.
    no_layer: `cost_summary` of the same step with no core layer.
    one_layer: `cost_summary` of the same step with one unrolled layer.

  Returns:
    The corrected `cost_summary`.
  """
  return {key: scanned[key] + (num_layers - 1) * (one_layer[key] -
                                                  no_layer[key])
          for key in scanned}


def step_report(*, chip: ChipSpec, num_devices: int, devices_per_chip: int,
                memory: Mapping[str, int], cost: Mapping[str, float],
                tokens_per_step: int,
                model_flops_per_step: float) -> dict[str, Any]:
  """Predicts fit, time, throughput and utilisation of one compiled step.

  Args:
    chip: the TPU generation.
    num_devices: JAX devices of the mesh (all slices).
    devices_per_chip: JAX devices per chip (2 for v4, whose TensorCores are
      separate devices; 1 for megacore and single-core chips).
    memory: `memory_summary` of the executable.
    cost: `cost_summary` of the executable.
    tokens_per_step: tokens the step processes, over all devices.
    model_flops_per_step: model FLOPs of the step (no recomputation), over
      all devices; see `sutra_jax.models.flops`.

  Returns:
    A JSON-ready dict. `flops_per_step` is XLA's count over all devices,
    recomputation included; `predicted_mfu` divides the model FLOPs by the
    peak FLOPs available in `estimated_step_seconds`, which is XLA's
    `optimal_seconds` when positive, else the roofline: the larger of
    FLOPs / peak and bytes accessed / HBM bandwidth, per device.
  """
  hbm = chip.hbm_bytes // devices_per_chip
  peak = chip.peak_bf16_flops / devices_per_chip
  roofline = max(
      cost["flops_per_device"] / peak,
      cost["bytes_accessed_per_device"] * devices_per_chip /
      chip.hbm_bytes_per_second)
  xla_seconds = cost["optimal_seconds"]
  # NOTE: libtpu 0.0.42.1 returns a negative optimal_seconds for the SUTRA
  # train step (positive for each op kind tried alone), so a non-positive
  # value is treated as missing and the roofline of XLA's own FLOP and byte
  # counts stands in.
  seconds = xla_seconds if xla_seconds > 0 else roofline
  available = seconds * num_devices * peak
  flops_per_step = cost["flops_per_device"] * num_devices
  return {
      "fits": memory["total_bytes"] <= hbm,
      "memory_per_device_bytes": memory["total_bytes"],
      "hbm_per_device_bytes": hbm,
      "memory": dict(memory),
      "flops_per_step": flops_per_step,
      "flops_per_device": cost["flops_per_device"],
      "bytes_accessed_per_device": cost["bytes_accessed_per_device"],
      "model_flops_per_step": float(model_flops_per_step),
      "estimated_step_seconds": seconds,
      "step_time_source": ("xla_optimal_seconds" if xla_seconds > 0 else
                           "roofline"),
      "xla_optimal_seconds": xla_seconds,
      "roofline_seconds": roofline,
      "tokens_per_step": tokens_per_step,
      "predicted_tokens_per_second": (tokens_per_step / seconds
                                      if seconds > 0 else None),
      "predicted_mfu": (model_flops_per_step / available
                        if available > 0 else None),
      "predicted_flops_utilization": (flops_per_step / available
                                      if available > 0 else None),
      "peak_flops_per_device": peak,
  }


_SIZE_SUFFIXES = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def out_of_memory_report(message: str, *, chip: ChipSpec,
                         devices_per_chip: int) -> dict[str, Any]:
  """Reports a step that the TPU compiler rejected for lack of HBM.

  The compiler stops before it has an executable, so only the memory it
  names in `message` ("... required for HLO temporaries (5.46T) exceeds
  available HBM (95.74G)") is known: no FLOPs, time or MFU.
  """
  first = message.strip().splitlines()[0] if message.strip() else message
  match = re.search(r"\(([\d.]+)([KMGT]?)\) exceeds", first)
  required = (int(float(match.group(1)) * _SIZE_SUFFIXES[match.group(2)])
              if match else None)
  return {
      "fits": False,
      "memory_per_device_bytes": required,
      "hbm_per_device_bytes": chip.hbm_bytes // devices_per_chip,
      "compile_error": first,
      "flops_per_step": None,
      "estimated_step_seconds": None,
      "predicted_tokens_per_second": None,
      "predicted_mfu": None,
  }


def topology_devices(topology: Topology, num_slices: int = 1) -> list:
  """Returns the abstract TPU devices of `num_slices` slices of `topology`."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  check_libtpu()
  # Compiling touches no TPU, so several compiling processes may share this
  # host; without this libtpu lets only one process load it at a time.
  # TPU_SKIP_MDS_QUERY keeps libtpu from asking a cloud metadata server
  # which TPU this host has.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  description = topologies.get_topology_desc(
      platform="tpu", topology_name=topology.libtpu_name,
      num_slices=num_slices)
  return list(description.devices)


def compile_report(topology: Topology, *, num_slices: int = 1,
                   decode: bool = True,
                   decode_batch_size: int = 0) -> dict[str, Any]:
  """Compiles the gin-bound phase's steps for `topology` and reports them.

  Parse the gin files first: the phase (`PhaseConfig`), the model
  (`ModelConfig`), the language table and the mesh (`make_mesh` for the
  in-slice sizes, `dcn_mesh_shape` across slices) come from gin.

  Args:
    topology: the slice to compile for.
    num_slices: slices joined over DCN.
    decode: also compile one decode step (a forward pass over a
      [decode batch, sequence length] buffer and the next token of each
      row).
    decode_batch_size: rows of the decode step; 0 takes the phase's
      batch size.

  Returns:
    The JSON-ready report: the train step's `step_report` fields at the top
    level, the topology and mesh, and the decode step under `decode`.
  """
  # Imported here so that the pure helpers above load without JAX.
  import jax  # pylint: disable=g-import-not-at-top
  from sutra_jax import distributed  # pylint: disable=g-import-not-at-top
  from sutra_jax import languages  # pylint: disable=g-import-not-at-top
  from sutra_jax.models import flops  # pylint: disable=g-import-not-at-top
  from sutra_jax.training import phases  # pylint: disable=g-import-not-at-top
  from sutra_jax.training import trainer  # pylint: disable=g-import-not-at-top

  phase = phases.phase_from_gin()
  table = languages.language_table()
  model_config = trainer.model_config_for_phase(table, phase,
                                                vocab_from_mixture=False)
  if model_config.grouped_matmul == "auto":
    # 'auto' asks the local backend, which is the CPU here; the program is
    # for TPUs, where 'auto' means megablox.
    model_config = dataclasses.replace(model_config,
                                       grouped_matmul="megablox")
  devices = topology_devices(topology, num_slices)
  mesh = distributed.make_mesh(devices=devices)
  devices_per_chip = len(devices) // (topology.num_chips * num_slices)
  tokens = phase.batch_size * phase.sequence_length
  header = {
      "topology": topology.name,
      "libtpu_topology": topology.libtpu_name,
      "num_slices": num_slices,
      "num_devices": len(devices),
      "chip": topology.chip.name,
      "chip_source": topology.chip.source,
      "mesh": {name: int(size) for name, size in mesh.shape.items()},
      "batch_size": phase.batch_size,
      "sequence_length": phase.sequence_length,
      "remat": model_config.remat,
  }
  try:
    setup, compiled = trainer.compile_train_step(phase, model_config, mesh,
                                                 table)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return {**header, **out_of_memory_report(
        str(e), chip=topology.chip, devices_per_chip=devices_per_chip)}
  cost = cost_summary(compiled.cost_analysis())
  # Setups of the same step with 0 and 1 unrolled core layers, whose costs
  # correct XLA's count of the scanned layers (`_scanned_layers_cost`).
  references = []
  if model_config.scan_core_layers and model_config.num_core_layers > 1:
    references = [trainer.compile_train_step(
        phase, dataclasses.replace(model_config, num_core_layers=n,
                                   scan_core_layers=False),
        mesh, table) for n in (0, 1)]
    cost = _scanned_layers_cost(
        cost, model_config.num_core_layers,
        *(cost_summary(c.cost_analysis()) for _, c in references))
    header["cost_source"] = ("XLA, core layer loop counted num_core_layers "
                             "times from 0- and 1-layer compiles")
  report = step_report(
      chip=topology.chip, num_devices=len(devices),
      devices_per_chip=devices_per_chip,
      memory=memory_summary(compiled.memory_analysis()),
      cost=cost, tokens_per_step=tokens,
      model_flops_per_step=tokens * flops.flops_per_token(
          model_config, phase.sequence_length))
  report = {**header, **report}
  if decode and report["fits"]:
    batch = decode_batch_size or phase.batch_size
    report["decode"] = _decode_report(
        setup, [s for s, _ in references], model_config.num_core_layers,
        topology, len(devices), devices_per_chip, batch,
        phase.sequence_length,
        # Forward only: a third of the training FLOPs of the buffer.
        model_flops=batch * phase.sequence_length * flops.flops_per_token(
            model_config, phase.sequence_length) / 3)
  return report


def _compile_decode(setup, batch_size: int, length: int):
  """Compiles one decode step of `setup`'s model: [batch_size, length]."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from sutra_jax import partitioning  # pylint: disable=g-import-not-at-top
  from sutra_jax.training import train_step as train_step_lib  # pylint: disable=g-import-not-at-top

  graphdef = setup.graphdef
  rows = partitioning.batch_sharding(setup.mesh, setup.rules,
                                     batch_size=batch_size)

  def decode_step(params, batch):
    model = nnx.merge(graphdef, params)
    logits = train_step_lib.run_model(model, batch).logits
    return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

  features = [name for name in train_step_lib.BATCH_FEATURES
              if name not in ("decoder_target_tokens", "decoder_loss_weights")]
  batch = {name: jax.ShapeDtypeStruct((batch_size, length), jnp.int32,
                                      sharding=rows) for name in features}
  step = jax.jit(decode_step,
                 out_shardings=NamedSharding(setup.mesh, PartitionSpec()))
  with jax.set_mesh(setup.mesh):
    return step.lower(setup.abstract_state.params, batch).compile()


def _decode_report(setup, references: Sequence, num_core_layers: int,
                   topology: Topology, num_devices: int,
                   devices_per_chip: int, batch_size: int, length: int,
                   model_flops: float) -> dict[str, Any]:
  """Compiles one decode step and reports it like the train step.

  With `references`, the setups of the model with 0 and 1 unrolled core
  layers, the scanned core's cost is corrected as for the train step.

  NOTE: the step compiled here is the forward pass over a whole
  [batch_size, length] buffer, which is what a prefill of that buffer
  costs. The generation loop (`sutra_jax.inference.decoding`) then runs
  one-token steps against a KV cache, and that step is not compiled here.
  """
  import jax  # pylint: disable=g-import-not-at-top
  try:
    compiled = _compile_decode(setup, batch_size, length)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return out_of_memory_report(str(e), chip=topology.chip,
                                devices_per_chip=devices_per_chip)
  cost = cost_summary(compiled.cost_analysis())
  if references:
    cost = _scanned_layers_cost(
        cost, num_core_layers,
        *(cost_summary(_compile_decode(reference, batch_size,
                                       length).cost_analysis())
          for reference in references))
  return step_report(
      chip=topology.chip, num_devices=num_devices,
      devices_per_chip=devices_per_chip,
      memory=memory_summary(compiled.memory_analysis()),
      cost=cost, tokens_per_step=batch_size, model_flops_per_step=model_flops)
