r"""Runs a multi-process JAX job on this machine, one process per "host".

  python -m sutra_jax.launch.local_multihost --num_processes 2 \
      --devices_per_process 4 -- --gin_file=runs/demo.gin \
      --gin_file=phases/concept.gin --run_dir=runs/mh/concept

Starts `--num_processes` copies of `--module` (default `sutra_jax.cli.train`)
with the arguments after `--`, plus `--coordinator_address`,
`--num_processes`, `--process_id` and `--cpu_devices`. The processes find
each other through a coordinator on a free port of 127.0.0.1 and reduce
across processes with gloo. Together they act as a pod slice of N hosts
with M devices each. They run the multi-host code paths: global arrays,
per-process data shards and multi-process orbax checkpoints.

Each output line is prefixed with `[pI]`, after a line
`[launch] process I: pid N` per process. SIGTERM and SIGINT are passed on
to every process. When one process fails, the others are stopped. The exit
status is 0 when all processes exit 0, else the first non-zero status.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Sequence

DEFAULT_MODULE = "sutra_jax.cli.train"
# Seconds the other processes get to exit on their own after one has failed:
# a process whose peer died waits in a collective until the coordinator
# notices, so it is stopped rather than waited for.
_GRACE_SECONDS = 10.0


def free_port() -> int:
  """Returns a TCP port of 127.0.0.1 that is free now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_environment(base: dict[str, str] | None = None) -> dict[str, str]:
  """Returns the environment of one process: CPU backend, own device count.

  The device count comes from `--cpu_devices`, so a forced host device count
  in XLA_FLAGS (as tests set) is removed; both together would disagree.
  """
  env = dict(os.environ if base is None else base)
  env["JAX_PLATFORMS"] = "cpu"
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  else:
    env.pop("XLA_FLAGS", None)
  return env


def process_command(module: str, args: Sequence[str], *, process_id: int,
                    num_processes: int, devices_per_process: int,
                    port: int) -> list[str]:
  """Returns the command line of process `process_id`."""
  command = [sys.executable, "-m", module, *args,
             f"--cpu_devices={devices_per_process}"]
  if num_processes > 1:
    command += [f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={num_processes}",
                f"--process_id={process_id}"]
  return command


def _pump(prefix: str, stream: IO[str], out: IO[str],
          lock: threading.Lock) -> None:
  for line in stream:
    with lock:
      out.write(f"{prefix} {line}")
      out.flush()


def run(module: str, args: Sequence[str], *, num_processes: int,
        devices_per_process: int, port: int = 0,
        out: IO[str] = sys.stdout) -> int:
  """Runs the job and returns its exit status.

  Args:
    module: the Python module each process runs with `python -m`.
    args: its arguments, the same for every process.
    num_processes: N, the processes to start.
    devices_per_process: M, the CPU devices of each process.
    port: the coordinator port; 0 picks a free one.
    out: where the prefixed output lines go.

  Returns:
    0 when every process exits 0, else the first non-zero exit status.
  """
  if num_processes < 1 or devices_per_process < 1:
    raise ValueError(f"need at least 1 process and 1 device each, got "
                     f"{num_processes} x {devices_per_process}")
  port = port or free_port()
  env = process_environment()
  lock = threading.Lock()
  processes, pumps = [], []
  for i in range(num_processes):
    p = subprocess.Popen(
        process_command(module, args, process_id=i,
                        num_processes=num_processes,
                        devices_per_process=devices_per_process, port=port),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, bufsize=1)
    processes.append(p)
    with lock:
      out.write(f"[launch] process {i}: pid {p.pid}\n")
      out.flush()
    pump = threading.Thread(target=_pump, args=(f"[p{i}]", p.stdout, out,
                                                lock), daemon=True)
    pump.start()
    pumps.append(pump)

  def forward(signum, frame):
    del frame
    for p in processes:
      if p.poll() is None:
        p.send_signal(signum)

  previous = {sig: signal.signal(sig, forward)
              for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    status = _wait(processes)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    for pump in pumps:
      pump.join(timeout=5)
  return status


def _wait(processes: list[subprocess.Popen]) -> int:
  """Waits for all processes; stops the rest once one has failed."""
  failed_at = None
  status = 0
  while any(p.poll() is None for p in processes):
    codes = [p.returncode for p in processes if p.returncode]
    if codes and failed_at is None:
      failed_at = time.monotonic()
      status = codes[0]
    if failed_at is not None and time.monotonic() - failed_at > _GRACE_SECONDS:
      for p in processes:
        if p.poll() is None:
          p.kill()
    time.sleep(0.1)
  if not status:
    status = next((p.returncode for p in processes if p.returncode), 0)
  return status


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m sutra_jax.launch.local_multihost",
      description="Run N processes of one JAX job on 127.0.0.1.")
  parser.add_argument("--num_processes", type=int, default=2,
                      help="processes (simulated hosts) to start")
  parser.add_argument("--devices_per_process", type=int, default=4,
                      help="CPU devices of each process")
  parser.add_argument("--module", default=DEFAULT_MODULE,
                      help="module each process runs with python -m")
  parser.add_argument("--port", type=int, default=0,
                      help="coordinator port on 127.0.0.1; 0 picks a free one")
  parser.add_argument("args", nargs=argparse.REMAINDER,
                      help="arguments of the module, after --")
  options = parser.parse_args(argv)
  args = options.args[1:] if options.args[:1] == ["--"] else options.args
  if options.num_processes < 1 or options.devices_per_process < 1:
    parser.error(f"--num_processes={options.num_processes} and "
                 f"--devices_per_process={options.devices_per_process} must "
                 "be at least 1")
  return run(options.module, args, num_processes=options.num_processes,
             devices_per_process=options.devices_per_process,
             port=options.port)


if __name__ == "__main__":
  sys.exit(main())
