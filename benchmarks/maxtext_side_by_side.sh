#!/usr/bin/env bash
# Times MaxText and sutra_jax on the same CPU, back to back, for
# docs/benchmarks.md ("Concept core against MaxText").
#
#   bash benchmarks/maxtext_side_by_side.sh [ANCHOR_DIR] [OUT_DIR]
#
# ANCHOR_DIR is the MaxText CPU anchor (default ../shared/anchors/maxtext_cpu;
# its run.sh installs MaxText into /tmp, outside this project). OUT_DIR
# (default runs/maxtext_side_by_side) receives one log per run, MaxText's
# summary.jsonl, and sutra.jsonl with one sutra-bench report per line.
# Each run records its peak resident memory with /usr/bin/time -v.
set -euo pipefail

ANCHOR=${1:-../shared/anchors/maxtext_cpu}
OUT=$(mkdir -p "${2:-runs/maxtext_side_by_side}" && cd "${2:-runs/maxtext_side_by_side}" && pwd)
BIN=${BIN:-.venv/bin}
STEPS=${STEPS:-10}

if [ ! -x "$ANCHOR/run.sh" ] && [ ! -f "$ANCHOR/run.sh" ]; then
  echo "error: no MaxText anchor at $ANCHOR: pass its directory as the first argument" >&2
  exit 2
fi

export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2
rm -f "$OUT/summary.jsonl" "$OUT/sutra.jsonl"

maxtext() {
  OUT="$OUT" bash "$ANCHOR/run.sh" one "$@"
}

sutra() {
  local name=$1; shift
  echo "=== sutra $name: $*" >&2
  /usr/bin/time -v "$BIN/sutra-bench" "$@" --steps="$STEPS" --json \
    >"$OUT/$name.json" 2>"$OUT/$name.log"
  local rss
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$OUT/$name.log")
  "$BIN/python" - "$OUT/$name.json" "$name" "$rss" >>"$OUT/sutra.jsonl" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
report["run"] = sys.argv[2]
report["max_rss_kib"] = int(sys.argv[3])
for key in ("dense", "moe"):  # `moe` reports nest both presets
  report.pop(key, None)
print(json.dumps(report))
PY
}

MOE=(decoder_block=mixtral num_experts=8 num_experts_per_tok=2 base_moe_mlp_dim=512)

maxtext dense_f32 dtype=float32
sutra dense_f32 train --preset=maxtext_tiny_dense --dtype=float32
maxtext dense_bf16_noremat remat_policy=none
sutra dense_bf16 train --preset=maxtext_tiny_dense --dtype=bfloat16
maxtext moe_ragged_bf16 "${MOE[@]}" sparse_matmul=true megablox=false
sutra moe_dropless_f32 train --preset=maxtext_tiny_moe --dispatch=dropless --dtype=float32
maxtext moe_ragged_bf16_noremat "${MOE[@]}" sparse_matmul=true megablox=false remat_policy=none
sutra moe_dropless_bf16 train --preset=maxtext_tiny_moe --dispatch=dropless --dtype=bfloat16
sutra moe_capacity_f32 train --preset=maxtext_tiny_moe --dispatch=capacity --dtype=float32
sutra moe_expert_parallel_f32 train --preset=maxtext_tiny_moe --dispatch=expert_parallel --dtype=float32
sutra moe_overhead_f32 moe --dtype=float32
echo "results in $OUT" >&2
