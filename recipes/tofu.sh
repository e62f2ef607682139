#!/usr/bin/env bash
# TOFU at CPU scale through the CLI: IHL + FILA (rank 8) on the forget authors, audited against the
# retain-only reference with every attack. The whole method x init x rank grid is `python bench/tofu.py`.
# Usage: recipes/tofu.sh [WORKDIR] [bench/tofu.py subset options, e.g. --forget-authors 1 --retain-authors 3 --holdout-authors 1]
# RELEARN_STEPS (default 30) sets the relearning attack's budget.
# A real model on the whole benchmark (GPU): recipes/tofu.sh runs/tofu-phi --model microsoft/phi-1_5 --full
set -euo pipefail
WORK=${1:-runs/tofu-recipe}
shift || true
PYTHON=${PYTHON:-python}
HERE="$(cd "$(dirname "$0")/.." && pwd)"

# Split the TOFU authors and build (or reuse) the full and reference models: sets DATA, FULL, REFERENCE.
# Only the DATA=, FULL=, REFERENCE= lines: libraries may log to stdout on import (DeepSpeed's accelerator probe).
eval "$("$PYTHON" "$HERE/bench/tofu.py" --prepare-only --workdir "$WORK" "$@" | grep -E '^(DATA|FULL|REFERENCE)=')"
SETS=(--forget "$DATA/forget.jsonl" --retain "$DATA/retain_eval.jsonl" \
      --real-authors "$DATA/real_authors.jsonl" --world-facts "$DATA/world_facts.jsonl")
if [ -f "$DATA/holdout.jsonl" ]; then SETS+=(--holdout "$DATA/holdout.jsonl"); fi

# The reference is audited once; every later audit reads its truth ratios and AUCs from this report.
forgetkit audit "$REFERENCE" "${SETS[@]}" --suite tofu,mia --max-new-tokens 64 -o "$WORK/reference.json"
forgetkit fisher "$FULL" "$DATA/forget.jsonl" --retain "$DATA/retain.jsonl" -o "$WORK/fisher.safetensors"
forgetkit init "$FULL" --fisher "$WORK/fisher.safetensors" --scheme fila --rank 8 -o "$WORK/init"
forgetkit unlearn "$FULL" "$DATA/forget.jsonl" --retain "$DATA/retain.jsonl" --init "$WORK/init" \
  --loss ihl --lr 1e-3 --epochs 5 --batch-size 8 --micro-batch-size 8 -o "$WORK/adapter"
forgetkit audit "$FULL" --adapter "$WORK/adapter" "${SETS[@]}" --reference-report "$WORK/reference.json" \
  --suite tofu,mia --attacks all --relearn-steps "${RELEARN_STEPS:-30}" --samples 8 --max-new-tokens 64 -o "$WORK/report.json"
