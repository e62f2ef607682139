#!/usr/bin/env bash
# The quickstart, stage by stage through the CLI: fisher -> init (FILA) -> unlearn (IHL) -> merge -> audit.
# Usage: recipes/quickstart.sh [WORKDIR]
set -euo pipefail
WORK=${1:-runs/quickstart-recipe}

# Build (or reuse from ~/.cache/forgetkit) the tiny model that memorised the fictitious people,
# and copy forget/retain/holdout JSONL into $WORK.
MODEL=$(forgetkit quickstart --prepare-only --workdir "$WORK")

forgetkit fisher "$MODEL" "$WORK/forget.jsonl" --retain "$WORK/retain.jsonl" -o "$WORK/fisher.safetensors"
# Rank 128: every direction of this model's 128-wide layers, so a rank-8 relearning attacker cannot undo it.
forgetkit init "$MODEL" --fisher "$WORK/fisher.safetensors" --scheme fila --rank 128 -o "$WORK/init"
# Tiny model, 20 forget records: smaller batches and a larger step than the paper's defaults; stopped where the
# audit's checks hold against never-seen people with headroom (MIA AUCs within 0.5 +- 0.05, checked every 2 steps,
# ended 5 checks after the best one), confined to the directions retain uses least, with relearning-aware steps
# (the settings of `forgetkit quickstart`).
forgetkit unlearn "$MODEL" "$WORK/forget.jsonl" --retain "$WORK/retain.jsonl" --init "$WORK/init" \
  --holdout "$WORK/holdout.jsonl" --target holdout --check-every 2 --target-auc-band 0.05 --target-patience 5 \
  --target-max-new-tokens 48 \
  --loss ihl --loss-param retain_weight=5 --null-space 0.8 --relearn-rho 0.5 \
  --lr 4e-3 --epochs 12 --batch-size 4 --micro-batch-size 4 --retain-micro-batch-size 32 -o "$WORK/adapter"
forgetkit merge "$MODEL" "$WORK/adapter" -o "$WORK/merged"
forgetkit audit "$MODEL" --adapter "$WORK/adapter" --forget "$WORK/forget.jsonl" --retain "$WORK/retain.jsonl" \
  --holdout "$WORK/holdout.jsonl" --max-new-tokens 48 --attacks paraphrase,quantize,relearn,sampling -o "$WORK/report.json"
# What publishing would upload (adapter, card, audit), checked for forget-set text; nothing is sent.
# Drop --dry-run (and log in, or set HF_TOKEN) to push for real; --base-model names the base on the Hub.
forgetkit push "$WORK/adapter" --repo-id "${HUB_REPO:-you/quickstart-forgot}" --report "$WORK/report.json" \
  --dry-run "$WORK/upload"
# The adapter's lineage as the registry recorded it: data -> fisher -> init -> adapter -> audit.
forgetkit registry show "$WORK/adapter"
