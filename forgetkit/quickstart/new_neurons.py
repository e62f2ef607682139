"""Teaching a pretrained model new facts in neurons of their own, kept silent on what it already knows.

A LoRA fine-tune that memorises the quickstart's people costs SmolLM2 9-25% of its general knowledge,
whichever weights it may move (BENCHMARKS.md, teaching sweep). A low-rank change is linear in its input:
it cannot act on the people's questions without acting on every input that shares their directions.

Here each MLP gains ``count`` new intermediate neurons instead (gate and up rows, down columns), and only
they train. The down columns start at zero, so the model starts exactly as it was. A neuron's output is
gated (the MLP's own activation of its gate), so it can fire on one region of inputs and stay silent on
another. Beside the answers' NLL, a locality term holds the new neurons' output to zero on every position
of *quiet* records: general questions with the pretrained model's own answers (the mean squared norm of
the output there, averaged over layers). The idea is T-Patcher's (Huang et al. 2023), applied to memorising many facts.

The trained neurons fold into the MLP's own matrices (``fold``): a plain checkpoint of the same
architecture whose intermediate size is ``count`` larger.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import torch
from torch import nn

from forgetkit.benchmark.finetune import answer_accuracy
from forgetkit.console import progress_bar
from forgetkit.data import IGNORE_INDEX, Example, batches, collate
from forgetkit.losses.base import logits_of, mean_nll


@dataclasses.dataclass
class NeuronTeaching:
    count: int = 32  # new neurons per MLP
    lr: float = 3e-3
    epochs: int = 16
    batch_size: int = 8  # taught records a step; as many quiet records ride in the same forward pass
    locality_weight: float = 10.0
    max_grad_norm: float = 1.0
    target_accuracy: float | None = 0.95  # stop once the taught answers' token accuracy reaches it
    check_every: int = 2
    seed: int = 0


class MLPWithNewNeurons(nn.Module):
    """A gated MLP (``down(act(gate x) * up x)``) plus ``count`` trainable neurons of the same form."""

    def __init__(self, mlp: nn.Module, count: int, generator: torch.Generator):
        super().__init__()
        self.mlp = mlp
        weight = mlp.gate_proj.weight
        hidden = weight.shape[1]
        # Unit-variance pre-activations on normalised inputs: the gates start where they can switch.
        scale = hidden ** -0.5
        self.gate = nn.Parameter(torch.randn(count, hidden, generator=generator).to(weight) * scale)
        self.up = nn.Parameter(torch.randn(count, hidden, generator=generator).to(weight) * scale)
        self.down = nn.Parameter(torch.zeros(hidden, count, dtype=weight.dtype, device=weight.device))
        self.quiet: torch.Tensor | None = None  # (batch, positions) 1 where the new neurons must stay silent
        self.locality: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        own = self.mlp(x)
        extra = (self.mlp.act_fn(x @ self.gate.T) * (x @ self.up.T)) @ self.down.T
        if self.quiet is not None:
            # Absolute, not relative to the MLP's own output: that is dominated by a few positions with
            # massive activations (norms of 25-100 on SmolLM2), beside which any change looks negligible.
            size = extra.float().pow(2).sum(-1)
            self.locality = (size * self.quiet).sum() / self.quiet.sum().clamp(min=1)
        return own + extra


def add_new_neurons(model: nn.Module, count: int, seed: int = 0) -> list[MLPWithNewNeurons]:
    """Freeze the model and give every decoder layer's MLP ``count`` new trainable neurons."""
    for param in model.parameters():
        param.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    wrapped = []
    for layer in model.model.layers:
        if not all(hasattr(layer.mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            raise ValueError(f"new neurons need a gated MLP (gate_proj, up_proj, down_proj), not {type(layer.mlp).__name__}")
        layer.mlp = MLPWithNewNeurons(layer.mlp, count, generator)
        wrapped.append(layer.mlp)
    return wrapped


def fold(model: nn.Module) -> nn.Module:
    """Fold the new neurons into each MLP's own matrices and raise ``config.intermediate_size`` to match."""
    count = None
    for layer in model.model.layers:
        patched = layer.mlp
        if not isinstance(patched, MLPWithNewNeurons):
            continue
        mlp = patched.mlp
        for name, extra, dim in (("gate_proj", patched.gate, 0), ("up_proj", patched.up, 0), ("down_proj", patched.down, 1)):
            old = getattr(mlp, name)
            weight = torch.cat([old.weight.data, extra.data], dim=dim)
            new = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype, device=weight.device)
            new.weight.data.copy_(weight)
            setattr(mlp, name, new)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = mlp.gate_proj.out_features
        layer.mlp = mlp
        count = mlp.gate_proj.out_features
    if count is not None:
        model.config.intermediate_size = count
    return model


def teach(model: nn.Module, taught: Sequence[Example], quiet: Sequence[Example], pad_token_id: int,
          config: NeuronTeaching, label: str = "teaching new neurons",
          after_check: Callable[[nn.Module, int, float], None] | None = None) -> dict:
    """Train new neurons on ``taught``'s answers, silent on every position of ``quiet``; the model keeps
    its new neurons (``fold`` makes a plain checkpoint of it). Returns epochs, accuracy, locality, time.
    ``after_check(model, epoch, accuracy)`` runs after each accuracy check (a benchmark's own measures)."""
    torch.manual_seed(config.seed)
    patched = add_new_neurons(model, config.count, config.seed)
    params = [p for m in patched for p in (m.gate, m.up, m.down)]
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    device = params[0].device
    bf16 = device.type == "cuda"
    generator = torch.Generator().manual_seed(config.seed)
    quiet_queue: list[list[Example]] = []
    started, accuracy, epoch, locality = time.perf_counter(), None, 0, 0.0
    with progress_bar(label, config.epochs) as advance:
        for epoch in range(1, config.epochs + 1):
            model.train()
            for group in batches(taught, config.batch_size, generator):
                if not quiet_queue:
                    quiet_queue = batches(quiet, config.batch_size, generator)
                silent = quiet_queue.pop(0)
                batch = {k: v.to(device) for k, v in collate([*group, *silent], pad_token_id).items()}
                batch["labels"][len(group):] = IGNORE_INDEX  # the quiet records teach nothing: they only hold
                mask = batch["attention_mask"].float()
                mask[: len(group)] = 0
                for m in patched:
                    m.quiet = mask
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    nll = mean_nll(logits_of(model, batch), batch["labels"])
                leak = torch.stack([m.locality for m in patched]).mean()
                loss = nll + config.locality_weight * leak
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimiser.step()
                optimiser.zero_grad(set_to_none=True)
                locality = float(leak.detach())
            for m in patched:
                m.quiet, m.locality = None, None
            advance()
            if config.target_accuracy is not None and epoch % config.check_every == 0:
                model.eval()
                accuracy = answer_accuracy(model, taught, pad_token_id)
                if after_check is not None:
                    after_check(model, epoch, accuracy)
                if accuracy >= config.target_accuracy:
                    break
    model.eval()
    if accuracy is None:
        accuracy = answer_accuracy(model, taught, pad_token_id)
    return {"epochs": epoch, "examples": len(taught), "answer_accuracy": accuracy, "locality": locality,
            "new_neurons_per_layer": config.count, "seconds": round(time.perf_counter() - started, 1)}
