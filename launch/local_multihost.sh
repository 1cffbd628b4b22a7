#!/usr/bin/env bash
# Runs N sutra-train processes on 127.0.0.1 as one multi-host JAX job.
#
#   launch/local_multihost.sh 2 4 --gin_file=runs/demo.gin \
#       --gin_file=phases/concept.gin --run_dir=runs/mh/concept
#
# Arguments: processes, CPU devices per process, then sutra-train's flags.
# See sutra_jax/launch/local_multihost.py for what each process gets.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS [sutra-train flags...]" >&2
  exit 2
fi
processes=$1
devices=$2
shift 2
exec "${PYTHON:-python}" -m sutra_jax.launch.local_multihost \
  --num_processes "$processes" --devices_per_process "$devices" -- "$@"
