"""``forgetkit fisher``: diagonal empirical Fisher of the NLL for every target weight.

Accumulated separately on the forget and the retain set. The default estimator is LoKU's
reference one: per batch, the squared gradient of the batch's mean token NLL times the batch's
target-token count, summed over batches. ``estimator="example"`` takes the same sum over single
examples, the textbook per-example empirical Fisher (slower: one backward per example).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch

from forgetkit import registry
from forgetkit.artifacts import Metadata, input_record, save_tensor_artifact
from forgetkit.console import console, progress_bar
from forgetkit.data import Example, batches, collate, target_token_count
from forgetkit.errors import ForgetkitError
from forgetkit.losses.base import logits_of, mean_nll
from forgetkit.models import LoadedModel, discover_targets, load_model
from forgetkit.stages.common import load_examples, table

ESTIMATORS = ("batch", "example")
STORE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


@dataclasses.dataclass
class FisherParams:
    targets: str = "all"
    batch_size: int = 8
    estimator: str = "batch"
    dtype: str = "bfloat16"  # storage dtype; accumulation is always float32
    model_dtype: str = "auto"
    truncate: bool = False


def accumulate_fisher(
    loaded: LoadedModel, targets: Sequence[str], examples: Sequence[Example], batch_size: int, estimator: str, label: str
) -> tuple[dict[str, torch.Tensor], int]:
    """Fisher sums (float32, on the model's device, module weight layout) and the target-token total."""
    model = loaded.model
    modules = dict(model.named_modules())
    weights = {name: modules[name].weight for name in targets}
    for param in model.parameters():
        param.requires_grad_(False)
    for weight in weights.values():
        weight.requires_grad_(True)
    sums = {name: torch.zeros(w.shape, dtype=torch.float32, device=w.device) for name, w in weights.items()}
    step = 1 if estimator == "example" else batch_size
    groups = batches(list(examples), step)
    device = next(model.parameters()).device
    tokens_total = 0
    model.eval()  # no dropout: the Fisher of the function we will edit
    try:
        with progress_bar(f"Fisher ({label})", len(groups)) as advance:
            for group in groups:
                batch = {k: v.to(device) for k, v in collate(group, loaded.tokenizer.pad_token_id).items()}
                tokens = target_token_count(batch)
                loss = mean_nll(logits_of(model, batch), batch["labels"])
                grads = torch.autograd.grad(loss, list(weights.values()))
                for name, grad in zip(weights, grads):
                    sums[name].add_(grad.float().square_().mul_(tokens))
                tokens_total += tokens
                advance()
    finally:
        for weight in weights.values():
            weight.requires_grad_(False)
    return sums, tokens_total


def run_fisher(
    model_ref: str, forget: str, retain: str | None, output: str | Path, params: FisherParams, *, trust_remote_code: bool = False
) -> Metadata:
    if params.estimator not in ESTIMATORS:
        raise ForgetkitError(f"--estimator must be one of {', '.join(ESTIMATORS)}, not '{params.estimator}'")
    if params.dtype not in STORE_DTYPES:
        raise ForgetkitError(f"--dtype must be one of {', '.join(STORE_DTYPES)}, not '{params.dtype}'")
    registry.ensure_ready()
    loaded = load_model(model_ref, dtype=params.model_dtype, trust_remote_code=trust_remote_code)
    _, forget_examples = load_examples(forget, loaded, truncate=params.truncate)
    retain_examples = load_examples(retain, loaded, truncate=params.truncate)[1] if retain else []
    targets = discover_targets(loaded.model, params.targets)

    forget_sums, forget_tokens = accumulate_fisher(loaded, targets, forget_examples, params.batch_size, params.estimator, "forget")
    # Without a retain set, FILA's denominator is its epsilon alone: importance is forget-only.
    retain_sums, retain_tokens = (
        accumulate_fisher(loaded, targets, retain_examples, params.batch_size, params.estimator, "retain")
        if retain_examples
        else ({}, 0)
    )

    store = STORE_DTYPES[params.dtype]
    tensors = {f"forget/{n}": t.to(store) for n, t in forget_sums.items()}
    tensors.update({f"retain/{n}": t.to(store) for n, t in retain_sums.items()})
    metadata = Metadata(
        stage="fisher",
        base_model=loaded.info,
        inputs={"forget": input_record(forget), **({"retain": input_record(retain)} if retain else {})},
        parameters=dataclasses.asdict(params),
        results={
            "forget_tokens": forget_tokens,
            "retain_tokens": retain_tokens,
            "forget_examples": len(forget_examples),
            "retain_examples": len(retain_examples),
            "targets": targets,
        },
    )
    save_tensor_artifact(output, tensors, metadata)
    registry.record(output)
    _print_summary(forget_sums, retain_sums, forget_tokens, retain_tokens, output)
    return metadata


def _print_summary(forget_sums, retain_sums, forget_tokens, retain_tokens, output) -> None:
    rows = []
    for name in forget_sums:
        f = forget_sums[name].mean().item() / max(forget_tokens, 1)
        r = retain_sums[name].mean().item() / max(retain_tokens, 1) if name in retain_sums else 0.0
        rows.append((name, f, r, f / (r + 1e-12)))
    rows.sort(key=lambda row: row[3], reverse=True)
    console.print(table("Fisher per token (top 10 by forget/retain ratio)", ["module", "forget", "retain", "ratio"], rows[:10]))
    console.print(f"[green]wrote[/] {output}  (forget tokens {forget_tokens}, retain tokens {retain_tokens})")
