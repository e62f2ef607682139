"""``forgetkit audit``: extraction metrics on forget / retain / held-out sets, before and after.

Reported per set: EL5 and EL10 and MA (Jang et al. 2023), ROUGE-L recall of greedy answers (QA
records), mean answer NLL and perplexity. With an adapter, the base model (adapter switched off)
is reported beside it. The report holds numbers only; generated answers and record text are
added solely with ``include_examples``.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from forgetkit.artifacts import SCHEMA_VERSION, check_artifact, input_record, write_json
from forgetkit import __version__
from forgetkit.console import console
from forgetkit.data import Example, Record
from forgetkit.metrics.extraction import extraction_likelihood, mean, memorisation_accuracy, teacher_forced
from forgetkit.metrics.rouge import answer_rouge, greedy_answers
from forgetkit.models import LoadedModel, load_model
from forgetkit.stages.common import load_examples, table

SUMMARY_KEYS = ("el5", "el10", "ma", "rouge_l", "nll", "perplexity")


@dataclasses.dataclass
class AuditParams:
    max_new_tokens: int = 128
    batch_size: int = 16
    generation_batch_size: int = 32
    include_examples: bool = False
    model_dtype: str = "auto"
    truncate: bool = False


def evaluate_set(
    model: torch.nn.Module, loaded: LoadedModel, records: list[Record], examples: list[Example], params: AuditParams
) -> dict[str, Any]:
    tokenizer = loaded.tokenizer
    forced = teacher_forced(model, examples, tokenizer.pad_token_id, params.batch_size)
    el = extraction_likelihood(model, tokenizer, examples, ns=(5, 10), batch_size=params.generation_batch_size)
    ma = memorisation_accuracy(forced)
    nll = [sum(t["nll"]) / len(t["nll"]) for t in forced]
    qa = [i for i, r in enumerate(records) if r.is_qa]
    answers = [""] * len(records)
    if qa:
        generated = greedy_answers(
            model, tokenizer, [examples[i] for i in qa], params.max_new_tokens, params.generation_batch_size
        )
        for i, answer in zip(qa, generated):
            answers[i] = answer
    rouge = answer_rouge(records, answers)
    total_nll = sum(sum(t["nll"]) for t in forced)
    total_tokens = sum(len(t["nll"]) for t in forced)
    summary = {
        "el5": mean(el[5]),
        "el10": mean(el[10]),
        "ma": mean(ma),
        "rouge_l": mean(rouge),
        "nll": mean(nll),
        "perplexity": math.exp(total_nll / max(total_tokens, 1)),
        "records": len(records),
    }
    per_example: dict[str, Any] = {"el5": el[5], "el10": el[10], "ma": ma, "rouge_l": rouge, "nll": nll}
    if params.include_examples:
        per_example["generated_answer"] = answers
        per_example["record"] = [r.fields for r in records]
    return {"summary": summary, "per_example": per_example}


def run_audit(
    model_ref: str,
    output: str | Path,
    params: AuditParams,
    *,
    forget: str,
    retain: str | None = None,
    holdout: str | None = None,
    adapter: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    loaded = load_model(model_ref, dtype=params.model_dtype, trust_remote_code=trust_remote_code)
    sources = {name: path for name, path in (("forget", forget), ("retain", retain), ("holdout", holdout)) if path}
    data = {name: load_examples(path, loaded, truncate=params.truncate) for name, path in sources.items()}

    variants: dict[str, Any] = {}
    model: torch.nn.Module = loaded.model
    if adapter is not None:
        check_artifact(adapter, "unlearn", loaded.info)
        model = PeftModel.from_pretrained(loaded.model, adapter)
        variants["base"] = model.disable_adapter
        variants["unlearned"] = nullcontext
    else:
        variants["model"] = nullcontext

    results: dict[str, Any] = {}
    for variant, context in variants.items():
        with context():
            results[variant] = {
                name: evaluate_set(model, loaded, records, examples, params) for name, (records, examples) in data.items()
            }

    report = {
        "schema_version": SCHEMA_VERSION,
        "stage": "audit",
        "forgetkit_version": __version__,
        "base_model": dataclasses.asdict(loaded.info),
        "adapter": input_record(adapter) if adapter else None,
        "inputs": {name: input_record(path) for name, path in sources.items()},
        "parameters": dataclasses.asdict(params),
        "results": results,
    }
    write_json(output, report)
    console.print(summary_table(results))
    console.print(f"[green]wrote[/] {output}")
    return report


def summary_table(results: dict[str, Any]):
    variants = list(results)
    sets = list(next(iter(results.values())))
    columns = ["metric"]
    for name in sets:
        columns += [f"{name} {v}" for v in variants] if len(variants) > 1 else [name]
    rows = []
    for key in SUMMARY_KEYS:
        row: list[Any] = [key]
        for name in sets:
            row += [results[v][name]["summary"][key] for v in variants]
        rows.append(row)
    return table("Audit", columns, rows)
