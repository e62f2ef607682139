"""How much general knowledge teaching the quickstart's people costs SmolLM2, per teaching set-up.

    python bench/teach_sweep.py NAME [--targets mlp] [--layers 6-17] [--rank 16] [--lr 2e-3] [--epochs 12]
    python bench/teach_sweep.py mid-mlp --layers 6-17
    python bench/teach_sweep.py down-only --targets down_proj --lr 3e-3

Teaches the real quickstart's training set (the people and the replayed general answers, as recipe v4
does) with LoRA on the chosen modules of the chosen layers, constant lr after 4 warm-up steps, and
measures, every 2 epochs, the people's answer-token accuracy and the general-knowledge score (32
questions the pretrained model answers right). Stops once the people reach 0.95. Writes
bench/results/teach-sweep/NAME.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import time
from pathlib import Path

from forgetkit.console import quiet_libraries

ROOT = Path(__file__).resolve().parents[1]


def layer_of(name: str) -> int:
    found = re.search(r"\.layers\.(\d+)\.", name)
    return int(found.group(1)) if found else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--targets", default="mlp")
    parser.add_argument("--layers", default=None, help="FIRST-LAST, inclusive (default: every layer)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--null-space", type=float, default=None,
                        help="let each adapter read only this share of its input directions: those the replayed "
                             "general answers use least (e.g. 0.5)")
    args = parser.parse_args()
    quiet_libraries()

    from forgetkit.adapters import build_peft_model, lora_config
    from forgetkit.benchmark.finetune import FineTuneConfig, answer_accuracy, fine_tune
    from forgetkit.metrics.rouge import greedy_answers
    from forgetkit.models import discover_targets, load_model
    from forgetkit.nullspace import confine
    from forgetkit.quickstart.general import score
    from forgetkit.quickstart.real import GENERAL_MAX_NEW_TOKENS, ensure_taught_model
    from forgetkit.stages.common import load_examples
    from forgetkit.stages.probe import question_set

    taught = ensure_taught_model(args.model)  # only for its data sets: the same people and replay as v4
    loaded = load_model(args.model, dtype="float32")
    _, examples = load_examples(str(taught / "train.jsonl"), loaded)
    targets = discover_targets(loaded.model, args.targets)
    if args.layers:
        first, last = (int(v) for v in args.layers.split("-"))
        targets = [t for t in targets if first <= layer_of(t) <= last]
    model = build_peft_model(loaded.model, lora_config(targets, args.rank, 2 * args.rank))
    records, questions = question_set(None, loaded)
    confinement = None
    if args.null_space:
        _, replay = load_examples(str(taught / "replay.jsonl"), loaded)
        confinement = confine(model, replay, loaded.tokenizer.pad_token_id, args.null_space)
        leak = list(confinement.leak.values())
        print(f"null space: trace share left free per layer min {min(leak):.2e} mean {sum(leak) / len(leak):.2e} "
              f"max {max(leak):.2e}", flush=True)

    def general() -> float:
        answers = greedy_answers(model, loaded.tokenizer, questions, GENERAL_MAX_NEW_TOKENS, batch_size=16)
        return score(answers, [r.fields for r in records])["accuracy"]

    checks, started = [], time.perf_counter()
    for epoch in range(2, args.epochs + 1, 2):
        # Two epochs at a time at a constant lr (warm-up in the first chunk only).
        config = FineTuneConfig(lr=args.lr, epochs=2, batch_size=8, warmup_steps=4 if epoch == 2 else 1,
                                min_lr_ratio=1.0, weight_decay=0.0, seed=epoch)
        with confinement.after_every_step() if confinement else contextlib.nullcontext():
            fine_tune(model, loaded.tokenizer, examples, config, label=f"epochs {epoch - 1}-{epoch}")
        people = answer_accuracy(model, examples, loaded.tokenizer.pad_token_id)
        checks.append({"epoch": epoch, "answer_accuracy": round(people, 3), "general": round(general(), 3),
                       "seconds": round(time.perf_counter() - started, 1)})
        print("CHECK", json.dumps(checks[-1]), flush=True)
        if people >= 0.95:
            break
    out = ROOT / "bench" / "results" / "teach-sweep" / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args), "modules": len(targets), "checks": checks}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("RESULT", json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
