#!/usr/bin/env bash
# Every GPU number the speed and methods issues ask for, in ONE device call
# (device time is scarce: prepare here, measure there once).
#
#   here:  benchmarks/gpu_setup.sh download            # wheels -> .gpu_wheels/
#          benchmarks/gpu_all.sh --smoke               # the same script at toy sizes on the CPU
#   there: benchmarks/gpu_all.sh                       # device tool: carry [".gpu_wheels"]
#
# Writes JSON lines to $OUT (default ./gpu_out): train_step.jsonl (LVS, ICL
# with teacher, HardPos neighbour batches; bf16 and fp32; the PyTorch peer
# eager and torch.compile'd where torch is installed), mining.jsonl (n=144k,
# d=512, K=1000), input_pipeline.jsonl (1..16 read threads), plus
# environment.txt. Each measurement has its own timeout and a failure is
# recorded as {"failed": NAME} so the rest still runs. Copy the lines into
# benchmarks/RESULTS.md with the device they name.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1

if (( SMOKE )); then
  PY="${PYTHON:-/work/venv/bin/python}"
  SHAPES=(--batch 8 --image_size 64 --spec 64x63 --width 8 --steps 2 --warmup 1)
  MINING=(--n 4000 --d 64 --k 100)
  PIPE=(--examples 64 --batch 16 --threads 1,2 --steps 2)
  T=600
else
  [[ -d .gpu_wheels ]] && benchmarks/gpu_setup.sh install > "$OUT/setup.log" 2>&1
  SHAPES=(--batch 128 --image_size 224 --spec 257x300 --width 64 --steps 20 --warmup 3)
  MINING=(--n 144000 --d 512 --k 1000 --block_size 2048)
  PIPE=(--examples 1024 --batch 128 --threads 1,4,8,16 --steps 6)
  T=240
fi

{ date -u; nvidia-smi -L 2>/dev/null; "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
  "$PY" -c "import torch; print('torch', torch.__version__)" 2>&1 | tail -1; nproc; git rev-parse HEAD; } \
  > "$OUT/environment.txt" 2>&1

run() {  # NAME FILE ARGS...
  local name="$1" file="$2"; shift 2
  echo "== $name" >&2
  if ! timeout "$T" "$PY" "$@" >> "$OUT/$file" 2>> "$OUT/$name.err"; then
    echo "{\"failed\": \"$name\", \"command\": \"$*\"}" >> "$OUT/$file"
  fi
  tail -n 1 "$OUT/$file" | cut -c1-300 >&2
}

step=benchmarks/train_step.py
# The headline: LVS bf16 against the torch.compile'd peer in the same process.
run lvs_bf16_compile train_step.jsonl $step --config=configs/lvs.py --dtype bfloat16 \
    "${SHAPES[@]}" --torch --torch_compile
run lvs_bf16 train_step.jsonl $step --config=configs/lvs.py --dtype bfloat16 "${SHAPES[@]}" --torch
run icl_bf16 train_step.jsonl $step --config=configs/iterative.py --teacher on --dtype bfloat16 \
    "${SHAPES[@]}" --torch --torch_compile
run hardpos_bf16 train_step.jsonl $step --config=configs/hard_positive.py --dtype bfloat16 "${SHAPES[@]}"
run lvs_fp32 train_step.jsonl $step --config=configs/lvs.py --dtype float32 "${SHAPES[@]}" --torch
# The ImageNet visual stream (EfficientNet-Lite0, XLA's grouped depthwise on GPU),
# fine-tuned and frozen; the torch peer is the reference model truncated alike
# (needs efficientnet-lite-pytorch among the carried wheels, else it is skipped).
run lvs_effnet_bf16 train_step.jsonl $step --config=configs/lvs.py --dtype bfloat16 "${SHAPES[@]}" \
    --visual_backbone efficientnet_lite0 --torch
run lvs_effnet_frozen_bf16 train_step.jsonl $step --config=configs/lvs.py --dtype bfloat16 \
    "${SHAPES[@]}" --visual_backbone efficientnet_lite0 --visual_trunk frozen
# ICL x HardPos: teacher and neighbour batches in one step.
run icl_hardpos_bf16 train_step.jsonl $step --config=configs/icl_hardpos.py --teacher on \
    --dtype bfloat16 "${SHAPES[@]}"
run mining mining.jsonl benchmarks/mining.py "${MINING[@]}"
run input_pipeline input_pipeline.jsonl benchmarks/input_pipeline.py "${PIPE[@]}"
echo "results in $OUT" >&2
