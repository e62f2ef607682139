"""Relearning attacks (Hu et al. 2024: a little fine-tuning brings "unlearned" knowledge back).

A fresh LoRA is trained on a fresh copy of the audited model for the largest budget, and the model is
measured after each budget's step count (by default 10, 30 and 100 steps), so recovery can be plotted
against steps. Two kinds:

- ``part``: train on a share of the set's records, measure the rest (the other facts of the same
  people come back if the model only hid them);
- ``related``: train on related but different text, the set's questions reworded (the record's
  ``paraphrased_question`` or a training template) with the ``paraphrased_answer`` where the record has
  one, and measure the set as it is.

Each kind runs on the forget set and, as the control, on the held-out set: how much a model learns
about people it never saw from as many records and steps.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import torch
from peft import get_peft_model

from forgetkit.adapters import lora_config
from forgetkit.audit.evaluate import EvalOptions, evaluate_set
from forgetkit.audit.sets import EvalSet
from forgetkit.data import Example, Record, batches, collate, encode
from forgetkit.losses.base import logits_of, mean_nll
from forgetkit.models import LoadedModel, discover_targets
from forgetkit.wording import TRAINING_TEMPLATES

KINDS = ("part", "related")


def split_for_relearning(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(count))
    random.Random(seed).shuffle(order)
    used = max(1, min(count - 1, round(count * fraction)))
    return sorted(order[:used]), sorted(order[used:])


def relearn(model: torch.nn.Module, examples: list[Example], pad: int, params, budgets: tuple[int, ...] = (),
            measure: Callable[[torch.nn.Module, int], None] | None = None) -> torch.nn.Module:
    """AdamW steps of a fresh LoRA on ``examples`` (cycled in seeded batches), up to the largest of
    ``budgets`` (or ``params.relearn_steps``); ``measure(model, steps)`` runs after each budget."""
    torch.manual_seed(params.seed)
    budgets = tuple(sorted(budgets)) or (params.relearn_steps,)
    targets = discover_targets(model, "all")
    peft_model = get_peft_model(model, lora_config(targets, params.relearn_rank, 2 * params.relearn_rank))
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=params.relearn_lr, weight_decay=0.0)
    device = next(peft_model.parameters()).device
    generator = torch.Generator().manual_seed(params.seed)
    queue: list[list[Example]] = []
    for step in range(1, budgets[-1] + 1):
        peft_model.train()
        if not queue:
            queue = batches(examples, params.relearn_batch_size, generator)
        batch = {k: v.to(device) for k, v in collate(queue.pop(0), pad).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = mean_nll(logits_of(peft_model, batch), batch["labels"])
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        if measure is not None and step in budgets:
            peft_model.eval()
            measure(peft_model, step)
    peft_model.eval()
    return peft_model


def related_records(records: list[Record]) -> list[Record]:
    """Each question/answer record reworded: its paraphrased question (or a training template) and its
    paraphrased answer where it has one."""
    out = []
    for number, record in enumerate(records):
        if not record.is_qa:
            continue
        question = record.get("paraphrased_question") or TRAINING_TEMPLATES[number % len(TRAINING_TEMPLATES)].format(
            question=record["question"])
        answer = record.get("paraphrased_answer") or record["answer"]
        answer = answer[0] if isinstance(answer, list) else answer
        out.append(Record(fields={"question": question, "answer": answer}, source=record.source))
    return out


def relearn_side(kind: str, model: torch.nn.Module, materialise: Callable[[], torch.nn.Module], loaded: LoadedModel,
                 evalset: EvalSet, unattacked: dict[str, Any], options: EvalOptions, params) -> dict[str, Any] | None:
    """One set under one kind of relearning: ``{"steps": {budget: (unattacked, attacked)}, ...}``, or
    None when the set cannot serve (too few records, no question/answer records to reword)."""
    if kind == "part":
        if len(evalset.records) < 2:
            return None
        used, measured = split_for_relearning(len(evalset.records), params.relearn_fraction, params.seed)
        training = [evalset.examples[i] for i in used]
        target = evalset.subset(measured)
        before = evaluate_set(model, loaded.tokenizer, target, options)  # the same records, unattacked
        described = {"records_used": len(used), "records_measured": len(measured)}
    else:
        rewritten = related_records(evalset.records)
        if not rewritten:
            return None
        training = encode(rewritten, loaded.tokenizer, context_length=loaded.context_length, truncate=True)
        target, before = evalset, unattacked
        described = {"records_used": len(rewritten), "records_measured": len(evalset.records)}
    results: dict[int, tuple[dict, dict]] = {}

    def measure(relearned: torch.nn.Module, steps: int) -> None:
        results[steps] = (before, evaluate_set(relearned, loaded.tokenizer, target, options))

    relearned = relearn(materialise(), training, loaded.tokenizer.pad_token_id, params, params.relearn_budgets, measure)
    del relearned
    return {"steps": results, **described}
