#!/usr/bin/env bash
# Forget what a pretrained model knows by itself (RWKU's setting): SmolLM2-135M-Instruct's facts about
# France, keeping what it knows about neighbouring countries and its general knowledge.
# Usage: recipes/pretrained_knowledge.sh [WORKDIR] [MODEL]
#   SUBJECT (France): what to forget; RETAIN (Germany): known facts trained on as the retain set;
#   NEIGHBOURS ("Italy Spain"): measured only, never trained on; QUESTIONS: the probe questions.
set -euo pipefail
WORK=${1:-runs/pretrained-knowledge}
MODEL=${2:-smollm2-135m-instruct}
SUBJECT=${SUBJECT:-France}
RETAIN=${RETAIN:-Germany}
NEIGHBOURS=${NEIGHBOURS:-Italy Spain}
QUESTIONS=${QUESTIONS:-$(dirname "$0")/data/countries.jsonl}
mkdir -p "$WORK"
neighbour_flags=(); for n in $NEIGHBOURS; do neighbour_flags+=(--subject "$n"); done

# 1. Probe: which facts the model knows, in its own words. The known facts about SUBJECT become the
#    forget set and those about RETAIN the retain set (the model's own answers are the targets).
forgetkit probe "$MODEL" "$QUESTIONS" --subject "$SUBJECT" -o "$WORK/forget.jsonl" --json "$WORK/forget-before.json"
forgetkit probe "$MODEL" "$QUESTIONS" --subject "$RETAIN" -o "$WORK/retain.jsonl" --json "$WORK/retain-before.json"
forgetkit probe "$MODEL" "$QUESTIONS" "${neighbour_flags[@]}" --json "$WORK/neighbours-before.json"
# General knowledge, without the questions about the countries above.
forgetkit probe "$MODEL" --general --exclude-subject "$SUBJECT" --exclude-subject "$RETAIN" --json "$WORK/general-before.json"

# 2. Unlearn: Fisher information of the forget facts, FILA on every linear layer, IHL.
forgetkit fisher "$MODEL" "$WORK/forget.jsonl" --retain "$WORK/retain.jsonl" -o "$WORK/fisher.safetensors"
forgetkit init "$MODEL" --fisher "$WORK/fisher.safetensors" --scheme fila --rank 8 -o "$WORK/init"
forgetkit unlearn "$MODEL" "$WORK/forget.jsonl" --retain "$WORK/retain.jsonl" --init "$WORK/init" \
  --loss ihl --lr "${LR:-1e-3}" --epochs "${EPOCHS:-8}" --batch-size 4 --micro-batch-size 4 -o "$WORK/adapter"

# 3. The same probes with the adapter on the original base.
forgetkit probe "$MODEL" "$QUESTIONS" --subject "$SUBJECT" --adapter "$WORK/adapter" --json "$WORK/forget-after.json"
forgetkit probe "$MODEL" "$QUESTIONS" --subject "$RETAIN" --adapter "$WORK/adapter" --json "$WORK/retain-after.json"
forgetkit probe "$MODEL" "$QUESTIONS" "${neighbour_flags[@]}" --adapter "$WORK/adapter" --json "$WORK/neighbours-after.json"
forgetkit probe "$MODEL" --general --exclude-subject "$SUBJECT" --exclude-subject "$RETAIN" --adapter "$WORK/adapter" \
  --json "$WORK/general-after.json"

# 4. The audit's extraction checks on the forget and retain facts (the model's own answers).
forgetkit audit "$MODEL" --adapter "$WORK/adapter" --forget "$WORK/forget.jsonl" --retain "$WORK/retain.jsonl" \
  --suite extraction --max-new-tokens 24 --canary-candidates 63 -o "$WORK/report.json"
