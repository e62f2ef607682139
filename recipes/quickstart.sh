#!/usr/bin/env bash
# The quickstart, stage by stage through the CLI: fisher -> init (FILA) -> unlearn (IHL) -> merge -> audit.
# Usage: recipes/quickstart.sh [WORKDIR]
set -euo pipefail
WORK=${1:-runs/quickstart-recipe}

# Build (or reuse from ~/.cache/forgetkit) the tiny model that memorised the fictitious people,
# and copy forget/retain/holdout JSONL into $WORK.
MODEL=$(forgetkit quickstart --prepare-only --workdir "$WORK")

forgetkit fisher "$MODEL" "$WORK/forget.jsonl" --retain "$WORK/retain.jsonl" -o "$WORK/fisher.safetensors"
forgetkit init "$MODEL" --fisher "$WORK/fisher.safetensors" --scheme fila --rank 8 -o "$WORK/init"
# Tiny model, 20 forget records: smaller batches and a larger step than the paper's defaults.
forgetkit unlearn "$MODEL" "$WORK/forget.jsonl" --retain "$WORK/retain.jsonl" --init "$WORK/init" \
  --loss ihl --lr 1.5e-3 --epochs 12 --batch-size 4 --micro-batch-size 4 -o "$WORK/adapter"
forgetkit merge "$MODEL" "$WORK/adapter" -o "$WORK/merged"
forgetkit audit "$MODEL" --adapter "$WORK/adapter" --forget "$WORK/forget.jsonl" --retain "$WORK/retain.jsonl" \
  --holdout "$WORK/holdout.jsonl" --max-new-tokens 48 --attacks paraphrase,quantize -o "$WORK/report.json"
# What publishing would upload (adapter, card, audit), checked for forget-set text; nothing is sent.
# Drop --dry-run (and log in, or set HF_TOKEN) to push for real; --base-model names the base on the Hub.
forgetkit push "$WORK/adapter" --repo-id "${HUB_REPO:-you/quickstart-forgot}" --report "$WORK/report.json" \
  --dry-run "$WORK/upload"
# The adapter's lineage as the registry recorded it: data -> fisher -> init -> adapter -> audit.
forgetkit registry show "$WORK/adapter"
