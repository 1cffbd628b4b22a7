#!/usr/bin/env bash
# Creates NUM_SLICES TPU slices as one queued resource (Multislice), so that
# they share a job over the data-centre network (DCN), installs this
# checkout on every worker of every slice and runs sutra-train on all.
#
#   TPU_PROJECT=my-project TPU_ZONE=us-west4-a TPU_NAME=sutra-v5e \
#   TPU_TYPE=v5e-256 TPU_RUNTIME=v2-alpha-tpuv5-lite NUM_SLICES=2 \
#   launch/tpu_multislice.sh -- \
#       --gin_file=runs/sutra_8x7b_v5e.gin --gin_file=phases/concept.gin \
#       --gin_bindings="VOCABULARY = 'gs://BUCKET/spm.model'" \
#       --run_dir=gs://BUCKET/sutra_8x7b/concept
#
# The gin files must bind dcn_mesh_shape to NUM_SLICES (runs/
# sutra_8x7b_v5e.gin sets dcn_mesh_shape.data = 2). Slices are named
# NAME-0 ... NAME-(N-1); flags as in tpu_vm.sh plus --num_slices.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/tpu_common.sh
source "$here/tpu_common.sh"

NUM_SLICES=${NUM_SLICES:-2}
log=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) TPU_PROJECT=$2; shift 2 ;;
    --zone) TPU_ZONE=$2; shift 2 ;;
    --name) TPU_NAME=$2; shift 2 ;;
    --type) TPU_TYPE=$2; shift 2 ;;
    --runtime) TPU_RUNTIME=$2; shift 2 ;;
    --num_slices) NUM_SLICES=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "error: unknown flag $1; see the header of $0" >&2; exit 2 ;;
  esac
done
require TPU_PROJECT TPU_ZONE TPU_NAME TPU_TYPE TPU_RUNTIME
if [[ $# -eq 0 ]]; then
  echo "error: no sutra-train flags after --; pass --gin_file and --run_dir" >&2
  exit 2
fi
log=${log:-$TPU_NAME.log}

if ! "$GCLOUD" compute tpus queued-resources describe "$TPU_NAME" \
    --project "$TPU_PROJECT" --zone "$TPU_ZONE" >/dev/null 2>&1; then
  "$GCLOUD" compute tpus queued-resources create "$TPU_NAME" \
    --project "$TPU_PROJECT" --zone "$TPU_ZONE" \
    --accelerator-type "$TPU_TYPE" --runtime-version "$TPU_RUNTIME" \
    --node-count "$NUM_SLICES" --node-prefix "$TPU_NAME"
fi
echo "waiting for queued resource $TPU_NAME to become ACTIVE..." >&2
until [[ "$("$GCLOUD" compute tpus queued-resources describe "$TPU_NAME" \
    --project "$TPU_PROJECT" --zone "$TPU_ZONE" \
    --format='value(state.state)')" == ACTIVE ]]; do
  sleep 60
done

# Every slice runs the same steps as tpu_vm.sh, reusing the slice it finds.
train_args=("$@")
pids=()
for ((i = 0; i < NUM_SLICES; i++)); do
  TPU_NAME="$TPU_NAME-$i" "$here/tpu_vm.sh" --project "$TPU_PROJECT" \
    --zone "$TPU_ZONE" --log "$log.slice$i" -- "${train_args[@]}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
