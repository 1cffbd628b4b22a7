#!/usr/bin/env bash
# Creates (or reuses) a TPU VM slice, installs this checkout on every worker
# and runs sutra-train on all of them with the same gin files.
#
#   TPU_PROJECT=my-project TPU_ZONE=us-east5-a TPU_NAME=sutra-v5p \
#   TPU_TYPE=v5p-128 TPU_RUNTIME=v2-alpha-tpuv5 \
#   launch/tpu_vm.sh [--queued] [--spot] -- \
#       --gin_file=runs/sutra_8x7b_v5p.gin --gin_file=phases/concept.gin \
#       --gin_bindings="VOCABULARY = 'gs://BUCKET/spm.model'" \
#       --run_dir=gs://BUCKET/sutra_8x7b/concept
#
# Flags (each also an environment variable, see tpu_common.sh):
#   --project, --zone, --name, --type, --runtime
#   --queued   create through a queued resource (waits for capacity)
#   --spot     ask for Spot capacity (preemptible; the trainer saves on
#              SIGTERM and a re-run resumes)
#   --log FILE where to stream the workers' output (default: NAME.log)
# Everything after -- goes to sutra-train on every worker, which joins the
# job with --distributed_auto. The run directory must be a bucket path that
# every worker can write, such as gs://BUCKET/run.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/tpu_common.sh
source "$here/tpu_common.sh"

queued=0
spot=0
log=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) TPU_PROJECT=$2; shift 2 ;;
    --zone) TPU_ZONE=$2; shift 2 ;;
    --name) TPU_NAME=$2; shift 2 ;;
    --type) TPU_TYPE=$2; shift 2 ;;
    --runtime) TPU_RUNTIME=$2; shift 2 ;;
    --queued) queued=1; shift ;;
    --spot) spot=1; shift ;;
    --log) log=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "error: unknown flag $1; see the header of $0" >&2; exit 2 ;;
  esac
done
require TPU_PROJECT TPU_ZONE TPU_NAME
if [[ $# -eq 0 ]]; then
  echo "error: no sutra-train flags after --; pass --gin_file and --run_dir" >&2
  exit 2
fi
log=${log:-$TPU_NAME.log}

exists() {
  "$GCLOUD" compute tpus tpu-vm describe "$TPU_NAME" --project "$TPU_PROJECT" \
    --zone "$TPU_ZONE" --format="value(state)" 2>/dev/null
}

create() {
  require TPU_TYPE TPU_RUNTIME
  local capacity=()
  if [[ $spot -eq 1 ]]; then
    capacity=(--spot)
  fi
  if [[ $queued -eq 1 ]]; then
    "$GCLOUD" compute tpus queued-resources create "$TPU_NAME" \
      --project "$TPU_PROJECT" --zone "$TPU_ZONE" --node-id "$TPU_NAME" \
      --accelerator-type "$TPU_TYPE" --runtime-version "$TPU_RUNTIME" \
      "${capacity[@]}"
    echo "waiting for queued resource $TPU_NAME to become ACTIVE..." >&2
    until [[ "$("$GCLOUD" compute tpus queued-resources describe "$TPU_NAME" \
        --project "$TPU_PROJECT" --zone "$TPU_ZONE" \
        --format='value(state.state)')" == ACTIVE ]]; do
      sleep 60
    done
  else
    "$GCLOUD" compute tpus tpu-vm create "$TPU_NAME" --project "$TPU_PROJECT" \
      --zone "$TPU_ZONE" --accelerator-type "$TPU_TYPE" \
      --version "$TPU_RUNTIME" "${capacity[@]}"
  fi
}

state=$(exists || true)
if [[ -z "$state" ]]; then
  create
else
  echo "reusing TPU VM $TPU_NAME ($state)" >&2
fi

# Copy this checkout (without runs and virtual environments) to every worker
# and install it with the TPU extra.
archive=$(mktemp --suffix=.tar.gz)
trap 'rm -f "$archive"' EXIT
tar -C "$here/.." --exclude=./.git --exclude=./.venv --exclude=./runs \
  -czf "$archive" .
"$GCLOUD" compute tpus tpu-vm scp "$archive" "$TPU_NAME:sutra_jax.tar.gz" \
  --project "$TPU_PROJECT" --zone "$TPU_ZONE" --worker=all
tpu_ssh_all "rm -rf sutra_jax && mkdir sutra_jax && tar -C sutra_jax -xzf sutra_jax.tar.gz && python3 -m venv sutra_venv && sutra_venv/bin/pip install --quiet './sutra_jax[tpu]'"

# Same command on every worker; JAX finds the coordinator and the process
# ids from the TPU metadata. printf %q keeps each flag one word.
train_args=$(printf ' %q' "$@")
echo "starting sutra-train on every worker of $TPU_NAME; output in $log" >&2
tpu_ssh_all "cd sutra_jax && ../sutra_venv/bin/sutra-train --distributed_auto$train_args" \
  2>&1 | tee "$log"
