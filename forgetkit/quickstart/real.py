"""``forgetkit quickstart --model smollm2-135m-instruct``: the quickstart on a real pretrained model.

1. the pretrained model (a packaged GGUF shortcut, a ``.gguf`` file or a folder) learns a few of the
   quickstart's fictitious people in new MLP neurons held silent on general questions
   (``forgetkit.quickstart.new_neurons``), folded into a plain checkpoint, cached;
2. fisher -> init (FILA) -> unlearn (IHL, confined to the kept records' null space) -> merge -> audit on
   some of them, the others kept;
3. what a tiny model cannot show: the general knowledge that came with pretraining (questions the
   pretrained model answers right, ``forgetkit.quickstart.general``), measured on the pretrained,
   fine-tuned and unlearned models.

Sized for a CPU: 10 people (2 forgotten, 6 kept, 2 never seen), question/answer records only, and 40
general questions with the pretrained model's own answers (where the new neurons must stay silent while
the people are taught, and kept while unlearning) so that neither the teaching nor the unlearning wipes
out what pretraining gave.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from forgetkit.cache import cached_folder, has_model
from forgetkit.console import console
from forgetkit.locations import cache_root
from forgetkit.quickstart.corpus import make_splits
from forgetkit.quickstart.general import REPLAY_QUESTIONS, score
from forgetkit.quickstart.new_neurons import NeuronTeaching, fold, teach
from forgetkit.quickstart.run import SPLITS, extraction_checks, extraction_rows, print_outcome, relative_drop, write_jsonl
from forgetkit.stages.audit import AuditParams, run_audit
from forgetkit.stages.common import table
from forgetkit.stages.fisher import FisherParams, run_fisher
from forgetkit.stages.init import InitParams, run_init
from forgetkit.stages.merge import MergeParams, run_merge
from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
from forgetkit.training import TrainConfig

# 2: general-knowledge replay; 3: a gentler teaching step; 4: LoRA on the MLPs only; 5: new neurons
RECIPE_VERSION = 5
SEED = 0
PEOPLE = dict(people=10, forget=2, holdout=2)
# Measured on SmolLM2 (general-knowledge accuracy of the taught model; the pretrained one scores 1.00):
# LoRA fine-tunes 0.41 (lr 4e-3, no replay) to 0.78-0.91 (r16 on the MLPs, replay) in 14 set-ups; 32 new
# neurons per MLP held silent on the replayed questions 0.969 with the people at 0.98 (BENCHMARKS.md).
TEACH = NeuronTeaching(count=32, lr=5e-3, epochs=16, batch_size=8, locality_weight=10.0, target_accuracy=0.95,
                       check_every=2, seed=SEED)
# Measured: lr 1e-3, retain weight 1: forget ROUGE-L 0.79 -> 0.04, retain 0.76 -> 0.63 (-17%); lr 7e-4,
# weight 2: forget 0.83 -> 0.10, retain -11% (no replay), -44% (replay in the kept set, diluting the people).
# 16 kept records beside every 4 forgotten ones: with 4, half of them replayed general answers, the kept
# people lost as much as the forgotten ones (retain ROUGE-L -69%).
# The adapter reads only the 80% of each layer's input directions the kept records use least: without it IHL
# took general knowledge 0.97 -> 0.69 on the v5 taught model ("the capital of Canada is Toronto"), with it 1.00.
UNLEARN = UnlearnParams(loss="ihl", loss_params={"retain_weight": "3"}, null_space=0.8,
                        train=TrainConfig(lr=5e-4, epochs=6, batch_size=4, micro_batch_size=4, seed=SEED,
                                          retain_micro_batch_size=16))
RANK = 8
MAX_NEW_TOKENS = 24
CANARY_CANDIDATES = 63
GENERAL_MAX_NEW_TOKENS = 24


def qa_only(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "question" in r]


def ensure_taught_model(model_ref: str, cache: Path | None = None) -> Path:
    """The cached folder with ``model/`` (the pretrained model with the people folded in), the three
    data sets and ``taught.json``; built once per base model and recipe version."""
    from forgetkit.models import load_model
    from forgetkit.stages.common import load_examples

    loaded = load_model(model_ref, dtype="float32")
    folder = cache_root(cache) / "quickstart" / f"real-{loaded.info.fingerprint}-v{RECIPE_VERSION}-seed{SEED}"

    def build(staging: Path) -> None:
        console.print(f"teaching {model_ref} the quickstart's fictitious people (cached in {folder})")
        splits = {name: qa_only(rows) for name, rows in make_splits(seed=SEED, **PEOPLE).items()}
        for name in SPLITS:
            write_jsonl(staging / f"{name}.jsonl", splits[name])
        replay = own_answers(loaded, REPLAY_QUESTIONS)
        write_jsonl(staging / "replay.jsonl", replay)
        write_jsonl(staging / "train.jsonl", splits["forget"] + splits["retain"] + replay)
        write_jsonl(staging / "people.jsonl", splits["forget"] + splits["retain"])
        _, people = load_examples(str(staging / "people.jsonl"), loaded)
        _, quiet = load_examples(str(staging / "replay.jsonl"), loaded)
        stats = teach(loaded.model, people, quiet, loaded.tokenizer.pad_token_id, TEACH,
                      label="Teaching the fictitious people")
        fold(loaded.model).save_pretrained(str(staging / "model"))
        loaded.tokenizer.save_pretrained(str(staging / "model"))
        (staging / "taught.json").write_text(json.dumps({
            "base_model": model_ref, "base_fingerprint": loaded.info.fingerprint, "method": "new neurons",
            "teaching": dataclasses.asdict(TEACH), **stats,
        }, indent=2) + "\n")
        console.print(f"taught in {stats['epochs']} epochs, {stats['seconds']}s (answer-token accuracy {stats['answer_accuracy']:.3f})")

    cached_folder(folder, has_model, build)
    return folder


def own_answers(loaded, questions) -> list[dict]:
    """The model's greedy answers to ``questions``, as question/answer records."""
    from forgetkit.data import Record, encode
    from forgetkit.metrics.rouge import greedy_answers

    records = [Record(fields={"question": q, "answer": "-"}, source=f"replay:{i}") for i, q in enumerate(questions, 1)]
    examples = encode(records, loaded.tokenizer, context_length=loaded.context_length)
    answers = greedy_answers(loaded.model, loaded.tokenizer, examples, GENERAL_MAX_NEW_TOKENS, batch_size=16)
    return [{"question": q, "answer": a} for q, a in zip(questions, answers) if a.strip()]


def general_knowledge(model_ref: str, adapter: str | None, reference_answers: list[str] | None = None) -> dict:
    """Greedy answers to the general questions and their score; the answers are returned too (the
    pretrained model's become the reference the later models are compared with)."""
    from peft import PeftModel

    from forgetkit.metrics.rouge import greedy_answers
    from forgetkit.models import load_model
    from forgetkit.stages.probe import question_set

    loaded = load_model(model_ref)
    model = PeftModel.from_pretrained(loaded.model, adapter) if adapter else loaded.model
    records, examples = question_set(None, loaded)
    answers = greedy_answers(model, loaded.tokenizer, examples, GENERAL_MAX_NEW_TOKENS, batch_size=16)
    return {**score(answers, [r.fields for r in records], reference_answers), "answers": answers}


def run_real_quickstart(model_ref: str, workdir: Path, cache: Path | None = None) -> dict:
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    folder = ensure_taught_model(model_ref, cache)
    model = str(folder / "model")
    for name in SPLITS:
        (workdir / f"{name}.jsonl").write_text((folder / f"{name}.jsonl").read_text())
    forget, retain, holdout = (str(workdir / f"{n}.jsonl") for n in SPLITS)
    # What unlearning keeps: the retained people and the replayed general answers (the audit's retain
    # set stays the people alone).
    keep = workdir / "keep.jsonl"
    keep.write_text((folder / "retain.jsonl").read_text() + (folder / "replay.jsonl").read_text())

    run_fisher(model, forget, str(keep), workdir / "fisher.safetensors", FisherParams())
    run_init(model, workdir / "init", InitParams(scheme="fila", rank=RANK), fisher=str(workdir / "fisher.safetensors"))
    run_unlearn(model, forget, workdir / "adapter", UNLEARN, retain=str(keep), init=str(workdir / "init"))
    run_merge(model, str(workdir / "adapter"), workdir / "merged", MergeParams())
    report = run_audit(
        model, workdir / "report.json",
        AuditParams(max_new_tokens=MAX_NEW_TOKENS, canary_candidates=CANARY_CANDIDATES, attacks=("paraphrase",)),
        forget=forget, retain=retain, holdout=holdout, adapter=str(workdir / "adapter"),
    )
    pretrained = general_knowledge(model_ref, None)
    taught = general_knowledge(model, None, pretrained["answers"])
    unlearned = general_knowledge(model, str(workdir / "adapter"), pretrained["answers"])
    general = {"pretrained": pretrained, "taught": taught, "unlearned": unlearned}
    outcome = summarise(report["results"], general, json.loads((folder / "taught.json").read_text()),
                        time.perf_counter() - started)
    (workdir / "quickstart.json").write_text(json.dumps(outcome, indent=2) + "\n")
    return outcome


def summarise(results: dict, general: dict, taught: dict, seconds: float) -> dict:
    base, after = results["base"], results["unlearned"]
    rows = extraction_rows(base, after)
    pre = general["pretrained"]["accuracy"]
    rows.append(("general knowledge accuracy (pretrained {:.3f})".format(pre), general["taught"]["accuracy"],
                 general["unlearned"]["accuracy"], -relative_drop(general["taught"]["accuracy"], general["unlearned"]["accuracy"])))
    rows.append(("general answers ROUGE-L vs pretrained", general["taught"]["rouge_l_vs_pretrained"],
                 general["unlearned"]["rouge_l_vs_pretrained"], None))
    console.print(table("Quickstart on a pretrained model: taught -> unlearned", ["metric", "before", "after", "change"], rows))
    checks = {
        **extraction_checks(base, after),
        "general knowledge within 5% of the pretrained model": abs(relative_drop(pre, general["unlearned"]["accuracy"])) <= 0.05,
        "under 20 minutes": seconds <= 1200,
    }
    print_outcome(checks, after["verdict"], seconds)
    return {
        "rows": [dict(zip(("metric", "before", "after", "change"), r)) for r in rows],
        "general_knowledge": {k: {m: v for m, v in g.items() if m != "answers"} for k, g in general.items()},
        "taught": {k: taught[k] for k in ("epochs", "answer_accuracy", "seconds")},
        "checks": checks,
        "verdict": after["verdict"]["verdict"],
        "seconds": seconds,
    }
