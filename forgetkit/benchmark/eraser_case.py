"""A LoRA fine-tuning with records to remove and answers to correct, and the retraining LLMEraser
is measured against (tests and ``bench/llmeraser_speed.py``).

The adapter is fitted the way influence functions assume: full batch, the loss LLMEraser
differentiates (the mean over records of each record's mean answer-token NLL, plus
``weight_decay / 2 * ||theta||^2`` in the objective rather than in the optimiser), and a cosine
schedule run to zero so it ends near a minimum. "Retraining" is the same fit, from the same LoRA
initialisation (the seed), on the cleaned data.
"""

from __future__ import annotations

import dataclasses
import json
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
