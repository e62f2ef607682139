#!/usr/bin/env bash
# The stages on several processes: the same commands, launched by accelerate.
# Usage: recipes/scale_out.sh CONFIG MODEL WORKDIR
#   CONFIG: recipes/accelerate/single_gpu.yaml, multi_gpu.yaml (8 GPUs, a copy of the base on each),
#           fsdp_8_gpus.yaml (8 GPUs, the base split between them), zero3_8_gpus.yaml (8 GPUs,
#           unlearn in a DeepSpeed ZeRO-3 engine: pip install 'forgetkit[deepspeed]'),
#           two_processes_cpu.yaml, fsdp_two_processes_cpu.yaml or zero3_two_processes_cpu.yaml
#   WORKDIR holds forget.jsonl, retain.jsonl and holdout.jsonl; outputs are written beside them.
set -euo pipefail
CONFIG=$1
MODEL=$2
WORK=$3
run() { accelerate launch --config_file "$CONFIG" -m forgetkit.cli "$@"; }

# Fisher: each process takes every N-th batch; sums and token counts are all-reduced.
run fisher "$MODEL" "$WORK/forget.jsonl" --retain "$WORK/retain.jsonl" -o "$WORK/fisher.safetensors"
# init is a per-weight decomposition: one process, one weight at a time (the memory of a weight, not of the model).
forgetkit init "$MODEL" --fisher "$WORK/fisher.safetensors" --scheme fila --rank 8 --by-layer -o "$WORK/init"
# Unlearn: the global batch (--batch-size) is the same whatever the process count; each process runs
# every N-th micro-batch of it and the LoRA gradients are summed, so N processes follow one.
run unlearn "$MODEL" "$WORK/forget.jsonl" --retain "$WORK/retain.jsonl" --init "$WORK/init" -o "$WORK/adapter"
# Merge one shard at a time: the memory of a shard, not of the model.
forgetkit merge "$MODEL" "$WORK/adapter" --by-shard -o "$WORK/merged"
# Audit: each process evaluates every N-th record; rank 0 gathers them and writes the report.
run audit "$MODEL" --adapter "$WORK/adapter" --forget "$WORK/forget.jsonl" --retain "$WORK/retain.jsonl" \
  --holdout "$WORK/holdout.jsonl" -o "$WORK/report.json"
