#!/usr/bin/env bash
# Shared settings of the TPU VM scripts; sourced, not run.
#
# Every name comes from the environment or a flag of the calling script;
# nothing here names a project, zone or bucket.
#   TPU_PROJECT   Google Cloud project            (required)
#   TPU_ZONE      zone of the slice, e.g. us-east5-a (required)
#   TPU_NAME      name of the TPU VM or queued resource (required)
#   TPU_TYPE      accelerator type, e.g. v5p-128    (required to create)
#   TPU_RUNTIME   TPU VM software version, e.g. v2-alpha-tpuv5 (required
#                 to create; see the Cloud TPU docs for your chip)
#   GCLOUD        the gcloud binary                 (default: gcloud)

GCLOUD=${GCLOUD:-gcloud}

require() {
  local name
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      echo "error: $name is not set; export it or pass its flag" >&2
      exit 2
    fi
  done
}

tpu_ssh_all() {
  # Runs one command on every worker of the slice $TPU_NAME.
  "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" --project "$TPU_PROJECT" \
    --zone "$TPU_ZONE" --worker=all --command "$1"
}
