r"""sutra-aot: compile a run's steps for a TPU topology on this host.

  sutra-aot --topology v5p-128 --gin_file=runs/sutra_8x7b_v5p.gin --json

Prints per-device memory against the chip's HBM (fits or not), XLA's FLOPs
and step-time estimate, and the predicted tokens/s and MFU of the train step
and of one decode step. Needs libtpu (pip install 'sutra_jax[tpu]'); no TPU.
"""

import json
import os
import sys
import tempfile
from typing import Sequence

# The host compiles for TPUs without using any: keep JAX on the CPU backend,
# where libtpu would otherwise try to open local TPUs.
os.environ["JAX_PLATFORMS"] = "cpu"

from absl import flags  # pylint: disable=g-import-not-at-top

from sutra_jax import gin_utils  # pylint: disable=g-import-not-at-top
from sutra_jax.cli import common  # pylint: disable=g-import-not-at-top
from sutra_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
from sutra_jax.tools import aot  # pylint: disable=g-import-not-at-top

_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "TPU slice to compile for: CHIP-N as in Cloud TPU "
    "accelerator types (v5p-128, v5e-256, v6e-64, v4-32) or CHIP:AxB[xC].")
_NUM_SLICES = flags.DEFINE_integer(
    "num_slices", 1, "Slices joined over DCN; bind dcn_mesh_shape to match.")
_JSON = flags.DEFINE_bool("json", False,
                          "Print the report as one JSON object.")
_OUTPUT = flags.DEFINE_string("output", None,
                              "Also write the JSON report to this file.")
_DECODE = flags.DEFINE_bool("decode", True, "Also compile one decode step.")
_DECODE_BATCH_SIZE = flags.DEFINE_integer(
    "decode_batch_size", 0, "Rows of the decode step; 0: the phase's "
    "batch size.")
common.define_gin_flags()


def _text(report: dict) -> str:
  lines = [f"{report['topology']} ({report['libtpu_topology']}, "
           f"{report['num_slices']} slice(s), {report['num_devices']} "
           f"devices), mesh {report['mesh']}"]
  for name, step in (("train", report), ("decode", report.get("decode"))):
    if not step:
      continue
    if "compile_error" in step:
      lines.append(f"{name}: DOES NOT FIT: {step['compile_error']}")
      continue
    mfu = step["predicted_mfu"]
    lines.append(
        f"{name}: memory/device {step['memory_per_device_bytes'] / 2**30:.2f}"
        f" GiB of {step['hbm_per_device_bytes'] / 2**30:.2f} GiB "
        f"({'fits' if step['fits'] else 'DOES NOT FIT'}); "
        f"{step['flops_per_step']:.3e} FLOPs/step; "
        f"{step['estimated_step_seconds']:.4f} s/step; "
        f"{step['predicted_tokens_per_second'] or 0:.0f} tokens/s; "
        f"MFU {'n/a' if mfu is None else f'{mfu:.1%}'}")
  return "\n".join(lines)


def _write_atomic(path: str, text: str) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=folder, delete=False,
                                   suffix=".tmp", encoding="utf-8") as f:
    f.write(text)
  os.replace(f.name, path)


def main(argv: Sequence[str]) -> int:
  """Validates the flags and gin, compiles and prints the report."""
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {' '.join(argv[1:])!r}; pass "
                      "settings as --gin_bindings")
  if not _TOPOLOGY.value:
    raise ConfigError("--topology is required, for example --topology "
                      "v5p-128")
  if _NUM_SLICES.value < 1:
    raise ConfigError(f"--num_slices={_NUM_SLICES.value} must be at least 1")
  topology = aot.parse_topology(_TOPOLOGY.value)
  aot.check_libtpu()
  gin_utils.parse_config(flags.FLAGS.gin_file, flags.FLAGS.gin_bindings)
  report = aot.compile_report(topology, num_slices=_NUM_SLICES.value,
                              decode=_DECODE.value,
                              decode_batch_size=_DECODE_BATCH_SIZE.value)
  text = json.dumps(report, indent=2)
  if _OUTPUT.value:
    _write_atomic(_OUTPUT.value, text + "\n")
  print(text if _JSON.value else _text(report))
  sys.stdout.flush()
  return 0


def run() -> None:
  """Console-script entry point of `sutra-aot`."""
  common.run_main(main)


if __name__ == "__main__":
  run()
