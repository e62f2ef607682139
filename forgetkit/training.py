"""The unlearning loop: forget batches paired with retain batches, gradient accumulation,
a divergence guard, per-epoch checkpoints with exact resume, and an early stop once forgotten.

Randomness is derived from (seed, epoch), never carried over between epochs, so resuming
from an epoch checkpoint replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator
from peft import PeftModel
from safetensors.torch import load_file, save_file

from forgetkit.adapters import reference_mode
from forgetkit.adversary import AdversaryConfig, RelearningAdversary, check_adversary
from forgetkit.artifacts import atomic_folder
from forgetkit.console import console, progress_bar
from forgetkit.data import Example, batches, collate, target_token_count
from forgetkit.distributed import Ranks, all_reduce_sum, gather_objects, main_writes, owns, ranks_of, sum_numbers
from forgetkit.errors import ForgetkitError
from forgetkit.losses.base import LossContext, UnlearningLoss, logits_of, mean_nll
from forgetkit.zero import ZeroEngine


@dataclasses.dataclass
class TrainConfig:
    lr: float = 1e-4
    epochs: int = 5
    batch_size: int = 32  # effective (global) batch
    micro_batch_size: int = 8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    # Retain records beside each forget micro-batch (None: as many as the forget micro-batch). More
    # of them steady the retain term when the kept records look like the forgotten ones.
    retain_micro_batch_size: int | None = None
    # Sharpness-aware steps (SAM, Foret et al. 2021; for unlearning, Fan et al. 2025): each step's gradient
    # is taken at the weights moved by this radius along the step's own gradient, so training seeks a
    # minimum whose whole neighbourhood forgets, which a few relearning steps cannot leave. 0: plain steps.
    # Two forward/backward passes a step.
    sam_rho: float = 0.0
    # Relearning-aware steps (a one-step, first-order form of tamper-resistant training, Tamirisa et al.
    # 2024): each step's gradient is taken at the weights moved this far (L2) *down* the forget batch's
    # own NLL, the direction a relearning attack takes first, so training seeks weights that still
    # forget after such a step; the loss logged is the one measured there. 0: off. Two forward/backward
    # passes a step (three with --sam-rho).
    relearn_rho: float = 0.0
    # A simulated relearning attacker (forgetkit.adversary): its own LoRA on every linear layer, trained on
    # a pool of forget records, and the loss also taken under it on the other forget records.
    adversary: AdversaryConfig = dataclasses.field(default_factory=AdversaryConfig)


@dataclasses.dataclass
class TrainResult:
    log: list[dict]  # one entry per optimiser step
    epochs_run: int
    steps: int
    stopped_early: str | None
    tokens: int
    seconds: float
    sharded_base: dict | None = None  # the DeepSpeed engine's weight layout, when it trained


StopCheck = Callable[[int, int], str | None]  # (epoch, optimiser step) -> reason to stop, or None


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


class RetainStream:
    """Endless shuffled micro-batches of a side set (retain; held-out for ``needs_holdout`` losses, as
    stream 2); reshuffled (deterministically) on every pass."""

    def __init__(self, examples: Sequence[Example], micro_batch_size: int, seed: int, epoch: int, stream: int = 1):
        self.examples, self.size = list(examples), micro_batch_size
        self.generator = _epoch_generator(seed, epoch, stream=stream)
        self.pending: list[list[Example]] = []

    def next(self) -> list[Example]:
        if not self.pending:
            self.pending = batches(self.examples, self.size, self.generator)
        return self.pending.pop(0)


def check_config(config: TrainConfig, deepspeed: bool = False) -> None:
    """Refuse settings training cannot run with; the unlearn stage calls this before it writes anything."""
    if config.micro_batch_size < 1 or config.batch_size < 1:
        raise ForgetkitError("--batch-size and --micro-batch-size must be at least 1")
    if config.retain_micro_batch_size is not None and config.retain_micro_batch_size < 1:
        raise ForgetkitError("--retain-micro-batch-size must be at least 1")
    if config.sam_rho < 0:
        raise ForgetkitError("--sam-rho must be 0 (plain steps) or a positive radius")
    if config.sam_rho > 0 and deepspeed:
        raise ForgetkitError("--sam-rho is not supported under DeepSpeed (its engine owns the step); run without it")
    if config.relearn_rho < 0:
        raise ForgetkitError("--relearn-rho must be 0 (plain steps) or a positive radius")
    if config.relearn_rho > 0 and deepspeed:
        raise ForgetkitError("--relearn-rho is not supported under DeepSpeed (its engine owns the step); run without it")
    check_adversary(config.adversary)
    if config.adversary.steps and deepspeed:
        raise ForgetkitError("--adversary-steps is not supported under DeepSpeed (its engine owns the step); run without it")


def train(
    model: PeftModel,
    loss_fn: UnlearningLoss,
    forget: Sequence[Example],
    retain: Sequence[Example] | None,
    pad_token_id: int,
    config: TrainConfig,
    *,
    accelerator: Accelerator,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    stop_check: StopCheck | None = None,
    check_every: int = 0,
    holdout: Sequence[Example] | None = None,
    bf16_autocast: bool = False,
    equal_passes: bool = False,
    deepspeed: bool = False,
) -> TrainResult:
    """Train the adapter; with several processes, each takes every N-th micro-batch of each global batch.

    The LoRA gradients (small) are summed over processes after each global batch and every process
    takes the same optimiser step, so N processes follow the one-process run: the same batches, the
    same retain micro-batches beside them (drawn from one schedule and split, never drawn per rank),
    the same loss curve. The model is not wrapped for DDP on purpose: its per-backward all-reduce
    needs every rank to run the same number of backward passes, which a global batch that does not
    divide evenly breaks.

    ``equal_passes`` (a sharded base, whose every forward and backward gathers weights across
    processes) makes every process run the same number of passes per step: one with fewer
    micro-batches adds a pass over the step's first micro-batch with weight 0, and a diverged loss
    does not end a process's passes early (the divergence is raised after the step, everywhere).

    ``deepspeed`` trains inside a DeepSpeed engine built from the launch's config (see
    ``forgetkit.zero``): the same batches and weights, with DeepSpeed reducing the gradients,
    clipping and stepping, and writing the checkpoints (every process its partition).

    ``stop_check`` runs at the end of each epoch, or every ``check_every`` optimiser steps when that
    is positive; a reason it returns ends training there. ``holdout`` feeds losses that compare the
    forget records with never-seen ones (``needs_holdout``): a held-out micro-batch beside each
    forget micro-batch, drawn like the retain ones.
    """
    check_config(config, deepspeed)
    if loss_fn.needs_retain and not retain:
        raise ForgetkitError(f"loss '{loss_fn.name}' needs a retain set (--retain)")
    if loss_fn.needs_holdout and not holdout:
        raise ForgetkitError(f"loss '{loss_fn.name}' needs a held-out set the model never saw (--holdout)")
    ranks = ranks_of(accelerator)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    device = accelerator.device
    engine = ZeroEngine(model, optimizer, config.micro_batch_size, config.max_grad_norm, ranks) if deepspeed else None
    forward_model = engine.forward_model if engine else model

    def autocast():
        # Explicit rather than accelerate's mixed_precision, which is fixed once per process: stages
        # run one after another in one process (the quickstart, the benchmarks) with different needs.
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_autocast)

    log: list[dict] = []
    start_epoch = 0
    if resume and checkpoint_dir is not None:
        if engine:
            start_epoch, log = engine.restore(checkpoint_dir)
        else:
            start_epoch, log = _restore(checkpoint_dir, model, optimizer, trainable)
        if start_epoch and ranks.is_main:
            console.print(f"resumed from {checkpoint_dir} after epoch {start_epoch}")

    def to_device(group: list[Example]) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in collate(group, pad_token_id).items()}

    def reference(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad(), autocast(), reference_mode(model):
            return logits_of(forward_model, batch)

    adversary = (RelearningAdversary(forward_model, forget, config.adversary, config.seed, to_device, autocast)
                 if config.adversary.steps else None)
    steps_per_epoch = math.ceil(len(forget) / config.batch_size)
    started = time.perf_counter()
    tokens = 0
    stopped = None
    epoch = start_epoch
    model.train()
    # The adversary's hooks come off the model however training ends.
    with progress_bar("Unlearning", steps_per_epoch * (config.epochs - start_epoch)) as advance, \
            adversary if adversary is not None else contextlib.nullcontext():
        for epoch in range(start_epoch, config.epochs):
            retain_stream = (RetainStream(retain, config.retain_micro_batch_size or config.micro_batch_size, config.seed, epoch)
                             if retain else None)
            holdout_stream = (RetainStream(holdout, config.micro_batch_size, config.seed, epoch, stream=2)
                              if loss_fn.needs_holdout else None)
            for batch_examples in batches(list(forget), config.batch_size, _epoch_generator(config.seed, epoch, 0)):
                micros = batches(batch_examples, config.micro_batch_size)
                # Every rank walks the whole retain schedule, so micro-batch i meets the same retain
                # micro-batch whichever rank runs it.
                retains = [retain_stream.next() if retain_stream else None for _ in micros]
                held_out = [holdout_stream.next() if holdout_stream else None for _ in micros]
                mine: list[int | None] = [i for i in range(len(micros)) if owns(i, ranks)]
                if equal_passes:
                    mine += [None] * (math.ceil(len(micros) / ranks.world) - len(mine))

                def passes() -> tuple[dict[str, float], float | None, int]:
                    """Forward and backward over this rank's micro-batches of the step; the gradients
                    accumulate in the parameters. Returns the weighted loss terms, a non-finite loss
                    if one came up, and the tokens that carried loss."""
                    terms_sum: dict[str, float] = {}
                    bad_loss, seen = None, 0
                    for position, index in enumerate(mine):
                        chosen = 0 if index is None else index
                        micro, retain_micro, holdout_micro = micros[chosen], retains[chosen], held_out[chosen]
                        forget_batch = to_device(micro)
                        retain_batch = to_device(retain_micro) if retain_micro else None
                        ctx = LossContext(model=forward_model, forget=forget_batch, retain=retain_batch, reference=reference,
                                          holdout=to_device(holdout_micro) if holdout_micro else None)
                        with autocast():
                            terms = loss_fn(ctx)
                        weight = 0.0 if index is None else len(micro) / len(batch_examples)
                        if not torch.isfinite(terms["loss"]):
                            bad_loss = terms["loss"].item()
                            if not equal_passes:
                                break
                        if engine:
                            engine.backward(terms["loss"] * weight, last_of_step=position == len(mine) - 1)
                        else:
                            accelerator.backward(terms["loss"] * weight)
                        if index is None or bad_loss is not None:
                            continue
                        for key, value in terms.items():
                            terms_sum[key] = terms_sum.get(key, 0.0) + value.item() * weight
                        seen += target_token_count(forget_batch) + (target_token_count(retain_batch) if retain_batch else 0)
                    return terms_sum, bad_loss, seen

                relearned = None
                if config.relearn_rho > 0 and not engine:
                    for index in mine:
                        micro = micros[0 if index is None else index]
                        forget_batch = to_device(micro)
                        with autocast():
                            nll = mean_nll(logits_of(forward_model, forget_batch), forget_batch["labels"])
                        weight = 0.0 if index is None else len(micro) / len(batch_examples)
                        accelerator.backward(nll * weight)
                    _sum_gradients(trainable, ranks)
                    # A step of this length down the forget NLL: where a relearning attack goes first.
                    relearned = _ascend(trainable, -config.relearn_rho)
                terms_sum, bad_loss, seen = passes()  # at the relearned weights when relearning-aware
                tokens += seen
                terms_sum, bad_loss = _combine(terms_sum, bad_loss, ranks)
                if bad_loss is not None:
                    raise ForgetkitError(
                        f"training diverged at epoch {epoch + 1}, step {len(log) + 1}: loss is {bad_loss} "
                        "(lower --lr or raise --retain-weight); no adapter was written"
                    )
                if config.sam_rho > 0 and not engine:
                    _sum_gradients(trainable, ranks)
                    moved = _ascend(trainable, config.sam_rho)
                    _, moved_bad_loss, _ = passes()  # the gradient at the moved weights is the one stepped on
                    _descend(trainable, moved)
                    (ranks_diverged,) = sum_numbers([0.0 if moved_bad_loss is None else 1.0], ranks, device)
                    if ranks_diverged:
                        raise ForgetkitError(
                            f"training diverged at epoch {epoch + 1}, step {len(log) + 1}: the loss at the "
                            "sharpness-aware neighbour is not finite (lower --sam-rho or --lr); no adapter was written"
                        )
                if relearned is not None:
                    _descend(trainable, relearned)  # back to the weights; the gradient taken there is kept
                if adversary is not None:
                    terms_sum.update(_under_attack(adversary, micros, mine, retains, held_out, len(batch_examples),
                                                   loss_fn, forward_model, reference, to_device, autocast,
                                                   accelerator, config.adversary.weight, ranks, device))
                    if not math.isfinite(terms_sum["loss_under_attack"]):
                        raise ForgetkitError(
                            f"training diverged at epoch {epoch + 1}, step {len(log) + 1}: the loss under the "
                            "simulated attacker is not finite (lower --adversary-weight or --lr); no adapter was written"
                        )
                if engine:
                    grad_norm = engine.step()
                else:
                    _sum_gradients(trainable, ranks)
                    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                if not torch.isfinite(torch.as_tensor(grad_norm)):
                    raise ForgetkitError(
                        f"training diverged at epoch {epoch + 1}, step {len(log) + 1}: gradient norm is not finite "
                        "(lower --lr); no adapter was written"
                    )
                if not engine:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                log.append({"epoch": epoch + 1, "step": len(log) + 1, "grad_norm": float(grad_norm), **terms_sum})
                advance(loss=terms_sum["loss"])
                if stop_check is not None and check_every > 0 and len(log) % check_every == 0:
                    stopped = stop_check(epoch + 1, len(log))
                    model.train()  # the check evaluates in eval mode
                    if stopped:
                        break
            if stopped:
                break
            if checkpoint_dir is not None and engine:
                engine.save_checkpoint(checkpoint_dir, epoch + 1, log)
            elif checkpoint_dir is not None:
                with main_writes(ranks) as writer:
                    if writer:
                        _save_checkpoint(checkpoint_dir, epoch + 1, model, optimizer, trainable, log)
            if stop_check is not None and check_every <= 0 and (stopped := stop_check(epoch + 1, len(log))):
                break
            model.train()  # the stop check evaluates in eval mode
    model.eval()
    epochs_run = (epoch + 1) if config.epochs > start_epoch else start_epoch
    (tokens,) = sum_numbers([tokens], ranks, device)
    return TrainResult(log, epochs_run, len(log), stopped, int(tokens), time.perf_counter() - started,
                       sharded_base=engine.layout if engine else None)


def _under_attack(adversary: RelearningAdversary, micros, mine, retains, held_out, batch_size: int, loss_fn,
                  forward_model, reference, to_device, autocast, accelerator, weight: float, ranks: Ranks,
                  device) -> dict[str, float]:
    """The attacker's steps, then the loss under it on this rank's forget records outside its pool; the
    gradient (times ``weight``) accumulates on the adapter beside the plain step's."""
    attacker_nll = adversary.attack()

    def unattacked_reference(batch):
        with adversary.paused():  # the reference is the original model, attacker or not
            return reference(batch)

    total = 0.0
    with adversary.applied():
        for index in mine:
            if index is None:
                continue
            micro = adversary.outside_pool(micros[index])
            if not micro:
                continue
            ctx = LossContext(model=forward_model, forget=to_device(micro),
                              retain=to_device(retains[index]) if retains[index] else None,
                              reference=unattacked_reference,
                              holdout=to_device(held_out[index]) if held_out[index] else None)
            with autocast():
                loss = loss_fn(ctx)["loss"]
            share = len(micro) / batch_size
            accelerator.backward(loss * share * weight)
            total += loss.item() * share
    (total,) = sum_numbers([total], ranks, device)
    return {"attacker_nll": attacker_nll, "loss_under_attack": total}


def _combine(terms_sum: dict[str, float], bad_loss: float | None, ranks: Ranks) -> tuple[dict[str, float], float | None]:
    """The global batch's loss terms (each rank's weighted share, summed) and any rank's divergence."""
    if ranks.world == 1:
        return terms_sum, bad_loss
    shares = gather_objects((terms_sum, bad_loss), ranks)
    combined: dict[str, float] = {}
    for share, _ in shares:
        for key, value in share.items():
            combined[key] = combined.get(key, 0.0) + value
    bad = next((b for _, b in shares if b is not None), None)
    return combined, bad


def _ascend(trainable: list[torch.nn.Parameter], rho: float) -> list[torch.Tensor]:
    """Move the weights by ``rho`` along their gradient (unit norm over all of them; a negative
    ``rho`` moves against it), clear the gradients, and return the moves to undo."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in trainable]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    scale = rho / (float(norm) + 1e-12)
    moves = []
    with torch.no_grad():
        for param, grad in zip(trainable, grads):
            move = (grad * scale).to(param.dtype)
            param.add_(move)
            moves.append(move)
            param.grad = None
    return moves


def _descend(trainable: list[torch.nn.Parameter], moves: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for param, move in zip(trainable, moves):
            param.sub_(move)


def _sum_gradients(trainable: list[torch.nn.Parameter], ranks: Ranks) -> None:
    if ranks.world == 1:
        return
    for param in trainable:
        if param.grad is None:  # a rank with no micro-batch this step still takes part
            param.grad = torch.zeros_like(param)
    all_reduce_sum([p.grad for p in trainable], ranks)


# --------------------------------------------------------------------------- checkpoints


def _save_checkpoint(root: Path, epoch: int, model, optimizer, trainable, log) -> None:
    with atomic_folder(root / f"epoch-{epoch:04d}") as staging:
        save_file({f"p{i}": p.detach().cpu().contiguous() for i, p in enumerate(trainable)}, str(staging / "adapter.safetensors"))
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        (staging / "state.json").write_text(json.dumps({"epoch": epoch, "log": log}))


def _restore(root: Path, model, optimizer, trainable) -> tuple[int, list[dict]]:
    finished = sorted(p for p in root.glob("epoch-*") if (p / "state.json").is_file())
    if not finished:
        return 0, []
    latest = finished[-1]
    if not (latest / "adapter.safetensors").is_file():
        raise ForgetkitError(f"{latest}: made by a DeepSpeed launch; resume it under the launch that made it")
    weights = load_file(str(latest / "adapter.safetensors"))
    if len(weights) != len(trainable):
        raise ForgetkitError(f"{latest}: checkpoint does not match this adapter (different targets or rank)")
    with torch.no_grad():
        for i, param in enumerate(trainable):
            param.copy_(weights[f"p{i}"].to(param.device, param.dtype))
    optimizer.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=True))
    state = json.loads((latest / "state.json").read_text())
    return int(state["epoch"]), list(state["log"])
