"""A relearning attacker simulated inside unlearning (``unlearn --adversary-steps``).

The audit's relearning attack trains a fresh LoRA on every linear layer of the unlearned model, on a quarter
of the forgotten records, and measures whether the other records come back. ``RelearningAdversary`` plays
that attacker during training: a low-rank delta of its own on every linear layer (outside the adapter being
trained), trained by AdamW on a pool of forget records to bring them back, and kept across outer steps so it
has taken as many steps as the real attack does before it is reset (a fresh attacker, a fresh pool). The
unlearning loss is then also taken *with the attacker applied*, on forget records outside its pool, and its
gradient reaches the adapter (first order: the attacker's weights count as constants). Training is asked
for an adapter under which what the attacker learns from some records does not bring back the others,
which is what separates a retrained model from one that only hides the data (Tamirisa et al. 2024 train
against many-step fine-tuning adversaries the same way, with meta-gradients).

The attacker is forward hooks, so neither the adapter nor the saved model ever holds its weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from forgetkit.data import Example
from forgetkit.errors import ForgetkitError
from forgetkit.losses.base import logits_of, mean_nll


@dataclasses.dataclass
class AdversaryConfig:
    steps: int = 0  # attacker AdamW steps per outer step (0: no adversary)
    lr: float = 1e-3  # the audit's relearning rate
    rank: int = 8  # the audit's relearning rank
    reset_every: int = 8  # outer steps before a fresh attacker and a fresh pool
    pool: float = 0.25  # share of forget records the attacker trains on (the audit's relearn fraction)
    weight: float = 1.0  # weight of the unlearning loss taken under the attacker
    batch_size: int = 4


def check_adversary(config: AdversaryConfig) -> None:
    if config.steps < 0:
        raise ForgetkitError("--adversary-steps must be 0 (off) or a positive number of attacker steps")
    if config.steps and not 0.0 < config.pool < 1.0:
        raise ForgetkitError(f"--adversary-pool {config.pool}: give the share of forget records the attacker sees, between 0 and 1")
    if config.steps and (config.rank < 1 or config.reset_every < 1 or config.lr <= 0 or config.weight <= 0):
        raise ForgetkitError("--adversary-rank, --adversary-reset, --adversary-lr and --adversary-weight must be positive")


def attackable_linears(model: nn.Module) -> list[nn.Linear]:
    """Every linear layer the audit's attacker could wrap: not the output head, not the adapter's own factors."""
    head = model.get_output_embeddings()
    return [module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module is not head and "lora_" not in name]


class RelearningAdversary:
    def __init__(self, model: nn.Module, forget: Sequence[Example], config: AdversaryConfig, seed: int,
                 to_device: Callable[[list[Example]], dict[str, torch.Tensor]], autocast: Callable):
        self.model, self.config, self.to_device, self.autocast = model, config, to_device, autocast
        self.forget = list(forget)
        if len(self.forget) < 2:
            raise ForgetkitError("--adversary-steps needs at least 2 forget records (one to relearn from, one to measure)")
        # Its own generators: every process draws the same attacker and pool, whatever else used the global RNG.
        self.random = random.Random(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.enabled = False
        self.layers = attackable_linears(model)
        device = next(model.parameters()).device
        self.factors: list[tuple[torch.Tensor, torch.Tensor]] = [
            (torch.zeros(config.rank, layer.in_features, device=device),
             torch.zeros(layer.out_features, config.rank, device=device)) for layer in self.layers]
        self.scale = 2.0  # alpha / rank with alpha = 2 * rank, as the audit's attacker
        self.hooks = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        self.outer_steps = 0
        self.pool: list[Example] = []
        self.pool_ids: set[int] = set()
        self.reset()

    def _hook(self, index: int):
        def add_attack(module, args, output):
            if not self.enabled:
                return output
            a, b = self.factors[index]
            x = args[0]
            return output + (x.to(a.dtype) @ a.T @ b.T * self.scale).to(output.dtype)
        return add_attack

    def reset(self) -> None:
        """A fresh attacker (LoRA's start: A random, B zero) on a fresh pool of forget records."""
        for a, b in self.factors:
            with torch.no_grad():
                a.copy_(nn.init.kaiming_uniform_(torch.empty(a.shape), a=math.sqrt(5), generator=self.generator))
                b.zero_()
            a.requires_grad_(True)
            b.requires_grad_(True)
        self.optimizer = torch.optim.AdamW([t for pair in self.factors for t in pair], lr=self.config.lr, weight_decay=0.0)
        used = max(1, min(len(self.forget) - 1, round(len(self.forget) * self.config.pool)))
        self.pool = self.random.sample(self.forget, used)
        self.pool_ids = {id(e) for e in self.pool}
        self.queue: list[list[Example]] = []

    def outside_pool(self, examples: Sequence[Example]) -> list[Example]:
        return [e for e in examples if id(e) not in self.pool_ids]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self.enabled = True
        try:
            yield
        finally:
            self.enabled = False

    def attack(self) -> float:
        """The attacker's steps for this outer step (after a reset when one is due); returns its last NLL.
        Gradients go to the attacker only (``autograd.grad``), never to the adapter being trained."""
        if self.outer_steps and self.outer_steps % self.config.reset_every == 0:
            self.reset()
        self.outer_steps += 1
        params = [t for pair in self.factors for t in pair]
        nll = torch.tensor(0.0)
        was_training = self.model.training
        self.model.eval()  # no dropout in the attacker's passes, as in the audit's measurement
        with self.active():
            for _ in range(self.config.steps):
                if not self.queue:
                    order = self.random.sample(self.pool, len(self.pool))
                    self.queue = [order[i:i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)]
                batch = self.to_device(self.queue.pop(0))
                with self.autocast():
                    nll = mean_nll(logits_of(self.model, batch), batch["labels"])
                grads = torch.autograd.grad(nll, params)
                for param, grad in zip(params, grads):
                    param.grad = grad
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        self.model.train(was_training)
        return float(nll.detach())

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The attacker in the forward pass as a constant: the outer loss's gradient reaches only the adapter."""
        for a, b in self.factors:
            a.requires_grad_(False)
            b.requires_grad_(False)
        try:
            with self.active():
                yield
        finally:
            for a, b in self.factors:
                a.requires_grad_(True)
                b.requires_grad_(True)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        enabled, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = enabled

    def __enter__(self) -> "RelearningAdversary":
        return self

    def __exit__(self, *exc) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
