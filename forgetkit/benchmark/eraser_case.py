"""A LoRA fine-tuning with records to remove and answers to correct, and the retraining LLMEraser
is measured against (tests and ``bench/llmeraser_speed.py``).

Data: question/answer facts about people the quickstart model never saw. Two regimes:
- ``twins``: every fact appears twice, as its question and as "Tell me: <question>" with the same
  answer. Removal deletes some twins (the fact stays in D through its other record); correction
  fixes facts whose plain record carries a wrong answer (another fact's) while the twin has the
  right one. This is the situation influence functions describe: the edited records' effect on
  the adapter is a moderate perturbation.
- ``unique``: every fact once. Removal deletes facts nothing else in D implies, correction gives a
  fact a new answer; retraining changes their loss by several nats, far outside the quadratic
  model an influence function extrapolates from.

The adapter is fitted the way influence functions assume: full batch, the loss LLMEraser
differentiates (the mean over records of each record's mean answer-token NLL, plus
``weight_decay / 2 * ||theta||^2`` in the objective rather than in the optimiser), and a cosine
schedule run to zero so it ends near a minimum. "Retraining" is the same fit, from the same LoRA
initialisation (the seed), on the cleaned data.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from forgetkit.console import progress_bar
from forgetkit.data import encode, load_records
from forgetkit.influence.hessian import per_example_loss_sum


@dataclasses.dataclass
class LoraFit:
    rank: int = 4
    steps: int = 150
    lr: float = 1e-2
    weight_decay: float = 0.01
    seed: int = 0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


REGIMES = ("twins", "unique")


@dataclasses.dataclass
class EditCase:
    train: list[dict]  # D, the adapter's training data
    clean: list[dict]  # D after the edit, what retraining uses
    edit: list[dict]  # the --remove or --correct file's records
    watched: list[dict]  # the records whose loss the edit should move (removed, or corrected answers)
    kept: list[dict]  # records the edit should leave alone


def facts(count: int, seed: int = 1) -> list[dict]:
    """``count`` question/answer facts from the quickstart corpus generator (seeds from ``seed`` on;
    each question once, so no two facts contradict each other)."""
    from forgetkit.quickstart.corpus import make_splits

    out, seen = [], set()
    while len(out) < count:
        for part in make_splits(seed=seed).values():
            for row in part:
                if "question" in row and row["question"] not in seen:
                    seen.add(row["question"])
                    out.append({"question": row["question"], "answer": row["answer"]})
        seed += 1
    return out[:count]


def build_case(kind: str, count: int, edited: int, regime: str = "twins", seed: int = 0) -> EditCase:
    """D, the cleaned D and the edit for removing or correcting ``edited`` of ``count`` facts."""
    qa = facts(count)
    picked = sorted(random.Random(seed).sample(range(count), edited))
    others = [i for i in range(count) if i not in picked]
    twins = [{"question": "Tell me: " + r["question"], "answer": r["answer"]} for r in qa] if regime == "twins" else []
    if kind == "remove":
        removed = [twins[i] for i in picked] if twins else [qa[i] for i in picked]
        clean = qa + [twins[i] for i in others] if twins else [qa[i] for i in others]
        kept = [r for r in qa + twins if r not in removed]
        return EditCase(train=qa + twins, clean=clean, edit=removed, watched=removed, kept=kept)
    if kind == "correct":
        # The wrong answer is another fact's; the correction restores the fact's own answer
        # (twins) or, with unique facts, gives it another fact's answer as new information.
        wrong = {i: qa[others[k % len(others)]]["answer"] for k, i in enumerate(picked)}
        if twins:
            train = [dict(r, answer=wrong[i]) if i in wrong else r for i, r in enumerate(qa)] + twins
            fixed = [qa[i] for i in picked]
        else:
            train = qa
            fixed = [dict(qa[i], answer=wrong[i]) for i in picked]
        clean = [r for i, r in enumerate(train) if i not in wrong] + fixed
        kept = [r for i, r in enumerate(train) if i not in wrong]
        return EditCase(train=train, clean=clean, edit=fixed, watched=fixed, kept=kept)
    raise ValueError(f"unknown edit '{kind}'")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def fit_lora(base_dir: Path, data: Path, out_dir: Path, fit: LoraFit) -> dict:
    """Fit a LoRA adapter on ``data`` and save it (plain PEFT files); returns seconds and final loss."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager")
    torch.manual_seed(fit.seed)  # the same LoRA initialisation for the original and the retrained fit
    model = get_peft_model(model, LoraConfig(r=fit.rank, lora_alpha=2 * fit.rank, lora_dropout=0.0,
                                             target_modules=list(fit.target_modules)))
    model.eval()  # no dropout anywhere: the fitted function is the one LLMEraser differentiates
    examples = encode(load_records(data), tokenizer, context_length=model.config.max_position_embeddings)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=fit.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, fit.steps)
    started = time.perf_counter()
    with progress_bar(f"fitting a rank-{fit.rank} LoRA on {len(examples)} records", fit.steps) as advance:
        for _ in range(fit.steps):
            loss = objective(model, examples, tokenizer.pad_token_id, params, fit.weight_decay)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            advance()
    seconds = time.perf_counter() - started
    with torch.no_grad():
        final = float(objective(model, examples, tokenizer.pad_token_id, params, fit.weight_decay))
    model.save_pretrained(out_dir)
    return {"seconds": seconds, "final_objective": final, "records": len(examples)}


def objective(model, examples, pad: int, params, weight_decay: float) -> torch.Tensor:
    data_loss = per_example_loss_sum(model, examples, pad, params[0].device) / len(examples)
    return data_loss + weight_decay / 2 * sum((p * p).sum() for p in params)


def mean_record_loss(base_dir: Path, adapter: Path, data: Path) -> float:
    """Mean over the records of ``data`` of each one's mean answer-token NLL under base + adapter."""
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter).eval()
    examples = encode(load_records(data), tokenizer, context_length=model.config.max_position_embeddings)
    with torch.no_grad():
        return float(per_example_loss_sum(model, examples, tokenizer.pad_token_id, torch.device("cpu"))) / len(examples)
