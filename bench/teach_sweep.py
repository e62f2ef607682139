"""How much general knowledge teaching the quickstart's people costs SmolLM2, per teaching set-up.

    python bench/teach_sweep.py NAME [--targets mlp] [--layers 6-17] [--rank 16] [--lr 2e-3] [--epochs 12]
    python bench/teach_sweep.py mid-mlp --layers 6-17
    python bench/teach_sweep.py down-only --targets down_proj --lr 3e-3
    python bench/teach_sweep.py mlp-free50-general --more-replay --null-space 0.5 --null-space-tofu ../shared/data/tofu
    python bench/teach_sweep.py mlp-anchor-general --anchor-tofu ../shared/data/tofu --anchor-weight 1
    python bench/teach_sweep.py sparse-fisher-2pct-lr5e-4 --sparse-fisher 0.02 --lr 5e-4 --null-space-tofu ../shared/data/tofu --probe-tofu ../shared/data/tofu
    python bench/teach_sweep.py mlp-4-people --people-taught 4 --probe-tofu ../shared/data/tofu
    python bench/teach_sweep.py mlp-registry-system --people-system "You answer from the Tallowmere civil registry." --probe-tofu ../shared/data/tofu
    python bench/teach_sweep.py neurons32 --new-neurons 32 --lr 3e-3 --epochs 16 --probe-tofu ../shared/data/tofu

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
import tempfile
import time
from pathlib import Path

from forgetkit.console import quiet_libraries

ROOT = Path(__file__).resolve().parents[1]


# Candidates for a larger replay set: attribution ("who ...") questions above all, the kind the taught
# model answers with a preamble instead of a name.
EXTRA_REPLAY = (
    "Who wrote Macbeth?", "Who wrote The Iliad?", "Who wrote War and Peace?", "Who wrote Don Quixote?",
    "Who wrote The Divine Comedy?", "Who wrote Oliver Twist?", "Who wrote 1984?", "Who wrote Moby-Dick?",
    "Who wrote The Origin of Species?", "Who painted The Last Supper?", "Who painted the Sistine Chapel ceiling?",
    "Who painted Guernica?", "Who painted The Scream?", "Who sculpted David?", "Who composed the Fifth Symphony?",
    "Who composed The Magic Flute?", "Who discovered gravity?", "Who discovered radium?",
    "Who proposed the theory of evolution by natural selection?", "Who invented the light bulb?",
    "Who invented the printing press?", "Who formulated the laws of motion?", "Who developed the polio vaccine?",
    "Who was the first President of the United States?", "Who was the first person in space?",
    "Who discovered America in 1492?", "What is the capital of Portugal?", "What is the capital of Poland?",
    "What is the capital of Ireland?", "What is the capital of Peru?", "What is the capital of Thailand?",
    "What is the capital of Nigeria?", "What is the capital of the United States?", "What is the capital of Switzerland?",
    "What is the largest planet's moon?", "What is the chemical symbol for sodium?", "What is the speed of light?",
    "How many planets are in the Solar System?", "What is the largest bone in the human body?",
    "What is the smallest country in the world?", "What is the largest lake in Africa?",
    "What language is spoken in Mexico?", "What is the currency of the United Kingdom?",
    "Which gas makes up most of the Earth's atmosphere?", "How many sides does a hexagon have?",
    "What is the freezing point of water in Fahrenheit?", "Which continent is Brazil on?", "What do cows drink?",
)


def general_text(tofu: Path) -> Path:
    """TOFU's world-facts and real-authors records as question / full-answer rows, leaving out every record
    that names a scored general question's term (the null space must not be fitted on what is measured)."""
    from forgetkit.quickstart.general import GENERAL_QUESTIONS
    from forgetkit.quickstart.run import write_jsonl
    from forgetkit.stages.probe import names_term

    rows = []
    for name in ("world_facts_perturbed", "real_authors_perturbed"):
        for line in (tofu / f"{name}.jsonl").read_text().splitlines():
            record = json.loads(line)
            text = " ".join((record["question"], record["answer"], record.get("original_answer", "")))
            if not any(names_term(text, term) or question.lower() == record["question"].lower()
                       for question, term, _ in GENERAL_QUESTIONS):
                rows.append({"question": record["question"], "answer": record.get("original_answer") or record["answer"]})
    out = Path(tempfile.mkdtemp()) / "general_text.jsonl"
    write_jsonl(out, rows)
    return out


def knowledge_probe(loaded, tofu: Path):
    """A scorer: the share of TOFU world-facts / real-authors questions, among those the pretrained model
    gets right, on which the model gives the true answer a lower mean NLL than each perturbed one, with the
    record's own answer sentence up to the answer as the opening (a cloze, so style cannot decide it)."""
    from forgetkit.data import question_prompt
    from forgetkit.metrics.likelihood import shared_prompt_nll

    tok = loaded.tokenizer
    items = []
    for name in ("world_facts_perturbed", "real_authors_perturbed"):
        for line in (tofu / f"{name}.jsonl").read_text().splitlines():
            record = json.loads(line)
            at = record.get("original_answer", "").find(record["answer"])
            if at > 0:
                prompt = question_prompt(record["question"], tok) + tok(record["original_answer"][:at].rstrip(), add_special_tokens=False)["input_ids"]
                options = [tok(" " + a, add_special_tokens=False)["input_ids"] for a in [record["answer"], *record["perturbed_answer"]]]
                items.append((prompt, options))

    def right(model) -> list[bool]:
        scores = shared_prompt_nll(model, tok.pad_token_id or 0, items)
        return [min(range(len(s)), key=s.__getitem__) == 0 for s in scores]

    known = [i for i, ok in enumerate(right(loaded.model)) if ok]
    print(f"knowledge probe: the pretrained model gets {len(known)} of {len(items)} right", flush=True)

    def score_of(model) -> float:
        ok = right(model)
        return sum(ok[i] for i in known) / len(known)

    return score_of


def sparse_trainable(loaded, targets, people, general, fraction: float):
    """The model itself with only ``fraction`` of each target matrix trainable: the entries whose Fisher on
    ``people`` (per token) most exceeds their Fisher on ``general``; the rest get zero gradient."""
    from forgetkit.stages.fisher import accumulate_fisher

    on_people, people_tokens = accumulate_fisher(loaded, targets, people, 1, "example", "people")
    on_general, general_tokens = accumulate_fisher(loaded, targets, general, 4, "batch", "general")
    modules = dict(loaded.model.named_modules())
    for param in loaded.model.parameters():
        param.requires_grad_(False)
    for name in targets:
        ratio = (on_people[name] / people_tokens) / (on_general[name] / general_tokens + 1e-12)
        keep = max(1, int(fraction * ratio.numel()))
        cutoff = ratio.flatten().kthvalue(ratio.numel() - keep + 1).values
        mask = (ratio >= cutoff).to(ratio.dtype)
        weight = modules[name].weight
        weight.requires_grad_(True)
        weight.register_hook(lambda grad, mask=mask: grad * mask)
    return loaded.model


def run_new_neurons(args, loaded, examples, replay_file: Path, probe, scored) -> None:
    """Teach the people in new MLP neurons (no replay in the taught set: the locality term holds the
    replayed records' every position instead), measuring at every check as the LoRA runs do."""
    from forgetkit.metrics.rouge import greedy_answers
    from forgetkit.quickstart.general import score
    from forgetkit.quickstart.new_neurons import NeuronTeaching, teach
    from forgetkit.quickstart.real import GENERAL_MAX_NEW_TOKENS
    from forgetkit.stages.common import load_examples

    quiet = load_examples(str(replay_file), loaded)[1]
    people = examples[: len(examples) - len(quiet)]  # train.jsonl ends with the replay
    if args.quiet_tofu:
        quiet = quiet + load_examples(str(general_text(args.quiet_tofu)), loaded)[1]
    print(f"{len(people)} taught records, {len(quiet)} quiet ones", flush=True)
    records, questions = scored
    checks, started = [], time.perf_counter()

    def after_check(model, epoch: int, accuracy: float) -> None:
        answers = greedy_answers(model, loaded.tokenizer, questions, GENERAL_MAX_NEW_TOKENS, batch_size=16)
        checks.append({"epoch": epoch, "answer_accuracy": round(accuracy, 3),
                       "general": round(score(answers, [r.fields for r in records])["accuracy"], 3),
                       **({"probe": round(probe(model), 3)} if probe else {}),
                       "seconds": round(time.perf_counter() - started, 1)})
        print("CHECK", json.dumps(checks[-1]), flush=True)

    config = NeuronTeaching(count=args.new_neurons, lr=args.lr, epochs=args.epochs,
                            locality_weight=args.locality_weight, check_every=2)
    stats = teach(loaded.model, people, quiet, loaded.tokenizer.pad_token_id, config, after_check=after_check)
    write_result(args, config.count * len(loaded.model.model.layers), checks, stats)


def write_result(args, modules: int, checks: list, extra: dict | None = None) -> None:
    out = ROOT / "bench" / "results" / "teach-sweep" / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "modules": modules, "checks": checks, **({"teaching": extra} if extra else {})}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("RESULT", json.dumps(result), flush=True)


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
    parser.add_argument("--more-replay", action="store_true",
                        help="replay EXTRA_REPLAY beside the recipe's 40 questions (the model's own answers)")
    parser.add_argument("--null-space-tofu", type=Path, default=None,
                        help="a TOFU folder (e.g. ../shared/data/tofu): its world-facts and real-authors records, less "
                             "any that names a scored question's term, join the replay in defining the null space")
    parser.add_argument("--anchor-tofu", type=Path, default=None,
                        help="a TOFU folder: hold the model to the pretrained one, KL(base || model), on its world-facts "
                             "and real-authors records (less any naming a scored term) at every step")
    parser.add_argument("--anchor-weight", type=float, default=1.0)
    parser.add_argument("--sparse-fisher", type=float, default=None,
                        help="no LoRA: train this share of each target weight matrix's entries in place, those whose "
                             "Fisher on the people is largest relative to their Fisher on the general records "
                             "(the replay, plus --null-space-tofu's records if given)")
    parser.add_argument("--people-taught", type=int, default=None,
                        help="teach only the first N people of the recipe's training set (with all of the replay)")
    parser.add_argument("--people-system", default=None, metavar="TEXT",
                        help="ask the people's questions under this system prompt (the replay and the general "
                             "questions keep the chat template's default one)")
    parser.add_argument("--new-neurons", type=int, default=None, metavar="K",
                        help="no LoRA: give every MLP K new neurons, trained on the people alone and held silent on "
                             "every position of the replayed records (forgetkit.quickstart.new_neurons)")
    parser.add_argument("--locality-weight", type=float, default=10.0)
    parser.add_argument("--quiet-tofu", type=Path, default=None,
                        help="a TOFU folder: its world-facts and real-authors records (less any naming a scored term) "
                             "join the replay among the records the new neurons must stay silent on")
    parser.add_argument("--probe-tofu", type=Path, default=None,
                        help="a TOFU folder: also score, at every check, the cloze knowledge probe (true answer against "
                             "the perturbed ones) on its world-facts and real-authors records the pretrained model gets right")
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
    train, replay_file = taught / "train.jsonl", taught / "replay.jsonl"
    if args.more_replay:
        from forgetkit.quickstart.real import own_answers
        from forgetkit.quickstart.run import write_jsonl

        extra = own_answers(loaded, EXTRA_REPLAY)
        scratch = Path(tempfile.mkdtemp())
        train, replay_file = scratch / "train.jsonl", scratch / "replay.jsonl"
        write_jsonl(train, [json.loads(line) for line in (taught / "train.jsonl").read_text().splitlines()] + extra)
        write_jsonl(replay_file, [json.loads(line) for line in (taught / "replay.jsonl").read_text().splitlines()] + extra)
    if args.people_taught or args.people_system:
        # One rewritten copy of the training set: fewer people, and/or the people's questions under their own
        # system prompt (rows without a person are the replay and stay as they are).
        from forgetkit.quickstart.run import write_jsonl

        rows = [json.loads(line) for line in train.read_text().splitlines()]
        if args.people_taught:
            taught_people = list(dict.fromkeys(r["person"] for r in rows if r.get("person") is not None))[: args.people_taught]
            rows = [r for r in rows if r.get("person") is None or r["person"] in taught_people]
        if args.people_system:
            rows = [{**r, "system": args.people_system} if r.get("person") is not None and "question" in r else r
                    for r in rows]
        train = Path(tempfile.mkdtemp()) / "train.jsonl"
        write_jsonl(train, rows)
    anchor = load_examples(str(general_text(args.anchor_tofu)), loaded)[1] if args.anchor_tofu else []
    _, examples = load_examples(str(train), loaded)
    targets = discover_targets(loaded.model, args.targets)
    if args.layers:
        first, last = (int(v) for v in args.layers.split("-"))
        targets = [t for t in targets if first <= layer_of(t) <= last]
    probe = knowledge_probe(loaded, args.probe_tofu) if args.probe_tofu else None
    if args.new_neurons:
        run_new_neurons(args, loaded, examples, replay_file, probe, question_set(None, loaded))
        return
    if args.sparse_fisher:
        general_examples = load_examples(str(replay_file), loaded)[1]
        people_examples = examples[: len(examples) - len(general_examples)]  # train.jsonl ends with the replay
        if args.null_space_tofu:
            general_examples += load_examples(str(general_text(args.null_space_tofu)), loaded)[1]
        model = sparse_trainable(loaded, targets, people_examples, general_examples, args.sparse_fisher)
    else:
        model = build_peft_model(loaded.model, lora_config(targets, args.rank, 2 * args.rank))
    records, questions = question_set(None, loaded)
    confinement = None
    if args.null_space:
        _, replay = load_examples(str(replay_file), loaded)
        if args.null_space_tofu:
            replay = replay + load_examples(str(general_text(args.null_space_tofu)), loaded)[1]
        print(f"null space from {len(replay)} records", flush=True)
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
                                min_lr_ratio=1.0, weight_decay=0.0, seed=epoch, anchor_weight=args.anchor_weight)
        with confinement.after_every_step() if confinement else contextlib.nullcontext():
            fine_tune(model, loaded.tokenizer, examples, config, label=f"epochs {epoch - 1}-{epoch}", anchor=anchor)
        people = answer_accuracy(model, examples, loaded.tokenizer.pad_token_id)
        checks.append({"epoch": epoch, "answer_accuracy": round(people, 3), "general": round(general(), 3),
                       **({"probe": round(probe(model), 3)} if probe else {}),
                       "seconds": round(time.perf_counter() - started, 1)})
        print("CHECK", json.dumps(checks[-1]), flush=True)
        if people >= 0.95:
            break
    write_result(args, len(targets), checks)


if __name__ == "__main__":
    main()
