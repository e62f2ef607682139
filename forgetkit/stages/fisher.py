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
from forgetkit.distributed import (Ranks, all_reduce_sum, gather_sharded, local_part, main_writes, make_accelerator,
                                   ranks_of, shard, shard_base, sharded_base_requested, sum_numbers)
from forgetkit.errors import ForgetkitError
from forgetkit.losses.base import logits_of, mean_nll
from forgetkit.models import (LoadedModel, checkpoint_in_eval, discover_targets, enable_gradient_checkpointing, load_model,
                              peak_memory_mib, reset_peak_memory)
from forgetkit.stages.common import load_examples, table

ESTIMATORS = ("batch", "example")
STORE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


@dataclasses.dataclass
class FisherParams:
    targets: str = "all"
    batch_size: int = 8
    estimator: str = "batch"
    dtype: str = "bfloat16"  # storage dtype; accumulation is always float32
    accumulate_on: str = "device"  # or "cpu": accumulators in host memory
    model_dtype: str = "auto"
    truncate: bool = False
    gradient_checkpointing: bool = False  # recompute block activations in the backward pass


def accumulate_fisher(
    loaded: LoadedModel, targets: Sequence[str], examples: Sequence[Example], batch_size: int, estimator: str, label: str,
    ranks: Ranks = Ranks(0, 1), accumulate_on: str = "device", sharded: bool = False,
) -> tuple[dict[str, torch.Tensor], int]:
    """Fisher sums (float32, module weight layout) and the target-token total, over all ranks.

    Each rank takes every N-th batch; the sums and token counts are then all-reduced, which gives
    exactly the one-process result (the estimator is a sum over batches). ``accumulate_on="cpu"``
    keeps the accumulators, one float32 copy of the target weights, in host memory.

    ``sharded``: the model's weights are split over the processes (FSDP, see ``shard_base``; the
    target weights must already require gradients). FSDP sums each weight's gradient over the
    processes as it splits it, and the Fisher needs each batch's gradient squared before any sum, so
    here every process runs every batch: FSDP's averaged gradient is then that batch's gradient, and
    each process squares and accumulates its own slice. The slices are gathered at the end. The
    model, not the work, is what is divided.
    """
    model = loaded.model
    modules = dict(model.named_modules())
    weights = {name: modules[name].weight for name in targets}
    if not sharded:
        for param in model.parameters():
            param.requires_grad_(False)
        for weight in weights.values():
            weight.requires_grad_(True)
            weight.grad = None  # backward adds to a gradient left by earlier work; start from none
    device = next(model.parameters()).device
    where = torch.device("cpu") if accumulate_on == "cpu" else device
    sums = {name: torch.zeros(local_part(w).shape, dtype=torch.float32, device=where) for name, w in weights.items()}
    step = 1 if estimator == "example" else batch_size
    groups = batches(list(examples), step) if sharded else shard(batches(list(examples), step), ranks)
    tokens_total = 0
    current = {"tokens": 0}
    hooks = [] if sharded else _square_as_produced(weights, sums, current)
    model.eval()  # no dropout: the Fisher of the function we will edit
    checkpoint_in_eval(model)  # checkpointed blocks (if enabled) recompute all the same
    try:
        with progress_bar(f"Fisher ({label})", len(groups)) as advance:
            for group in groups:
                batch = {k: v.to(device) for k, v in collate(group, loaded.tokenizer.pad_token_id).items()}
                tokens = current["tokens"] = target_token_count(batch)
                loss = mean_nll(logits_of(model, batch), batch["labels"])
                loss.backward()  # the hooks (or, sharded, FSDP's own) take each gradient as it is formed
                if sharded:
                    for name, weight in weights.items():
                        sums[name].add_(local_part(weight.grad).float().square_().mul_(tokens).to(where))
                        weight.grad = None
                tokens_total += tokens
                advance()
    finally:
        for hook in hooks:
            hook.remove()
        if not sharded:
            for weight in weights.values():
                weight.grad = None
                weight.requires_grad_(False)
    if sharded:
        return {name: gather_sharded(sums[name], weights[name]).to(where) for name in weights}, tokens_total
    for tensor in sums.values():
        # NCCL reduces device tensors only: host accumulators travel through the device one at a time.
        staged = tensor.to(device)
        all_reduce_sum([staged], ranks)
        tensor.copy_(staged)
    (tokens_total,) = sum_numbers([tokens_total], ranks, device)
    return sums, int(tokens_total)


def _square_as_produced(weights: dict[str, torch.Tensor], sums: dict[str, torch.Tensor], current: dict) -> list:
    """Hooks that fold each weight's gradient into its Fisher sum the moment backward forms it.

    One fused multiply-add (sum += tokens * g * g), then the gradient is dropped, so the target
    gradients are never all alive at once (``autograd.grad`` returned them together: SmolLM2's fisher
    peak 2106 -> 1671 MiB). Speed is unchanged (BENCHMARKS.md).
    """

    def hook_for(name: str):
        total = sums[name]

        def fold(weight: torch.Tensor) -> None:
            grad = weight.grad
            if total.device == grad.device:
                total.addcmul_(grad, grad, value=current["tokens"])
            else:  # accumulators in host memory: square on the device, move the result
                total.add_(grad.float().square_().mul_(current["tokens"]).to(total.device))
            weight.grad = None

        return fold

    return [weight.register_post_accumulate_grad_hook(hook_for(name)) for name, weight in weights.items()]


def run_fisher(
    model_ref: str, forget: str, retain: str | None, output: str | Path, params: FisherParams, *, trust_remote_code: bool = False
) -> Metadata:
    if params.estimator not in ESTIMATORS:
        raise ForgetkitError(f"--estimator must be one of {', '.join(ESTIMATORS)}, not '{params.estimator}'")
    if params.dtype not in STORE_DTYPES:
        raise ForgetkitError(f"--dtype must be one of {', '.join(STORE_DTYPES)}, not '{params.dtype}'")
    if params.accumulate_on not in ("device", "cpu"):
        raise ForgetkitError(f"--accumulate-on must be device or cpu, not '{params.accumulate_on}'")
    registry.ensure_ready()
    accelerator = make_accelerator()
    ranks = ranks_of(accelerator)
    sharded = sharded_base_requested() and ranks.world > 1
    reset_peak_memory(accelerator.device)
    # A sharded base is built on the host and split before it reaches the device.
    load_device = torch.device("cpu") if sharded else accelerator.device
    loaded = load_model(model_ref, dtype=params.model_dtype, device=load_device,
                        runs_on=accelerator.device, trust_remote_code=trust_remote_code)
    _, forget_examples = load_examples(forget, loaded, truncate=params.truncate)
    retain_examples = load_examples(retain, loaded, truncate=params.truncate)[1] if retain else []
    targets = discover_targets(loaded.model, params.targets)
    checkpointed = enable_gradient_checkpointing(loaded.model) if params.gradient_checkpointing else 0
    sharding = None
    if sharded:
        # FSDP fixes which weights take gradients when it wraps them: the targets, set first.
        modules = dict(loaded.model.named_modules())
        for param in loaded.model.parameters():
            param.requires_grad_(False)
        for name in targets:
            modules[name].weight.requires_grad_(True)
        sharding = shard_base(loaded.model, ranks, accelerator.device)

    def accumulate(examples, label):
        return accumulate_fisher(loaded, targets, examples, params.batch_size, params.estimator, label, ranks,
                                 params.accumulate_on, sharded)

    forget_sums, forget_tokens = accumulate(forget_examples, "forget")
    # Without a retain set, FILA's denominator is its epsilon alone: importance is forget-only.
    retain_sums, retain_tokens = accumulate(retain_examples, "retain") if retain_examples else ({}, 0)

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
    metadata.results["processes"] = ranks.world
    metadata.results["checkpointed_blocks"] = checkpointed
    metadata.results["sharded_base"] = sharding
    metadata.results["peak_memory_mib"] = round(peak_memory_mib(accelerator.device), 1)
    with main_writes(ranks) as writer:
        if writer:
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
