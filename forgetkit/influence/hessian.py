"""Gradients and curvature-vector products of a LoRA adapter's training loss, over the adapter's own
parameters only (the base model is frozen and never differentiated).

The training loss is L(theta) = (1/n) sum_z l(z) + (weight_decay / 2) ||theta||^2, with l(z) the
mean negative log-likelihood of record z's target tokens (its answer, or the whole text), which is
how forgetkit and most fine-tuning scripts weigh records. Everything runs in eval mode (LoRA
dropout off) so gradients and curvature are those of a deterministic function.

Two curvatures:
- ``hessian``: the exact Hessian, by double backward. A LoRA product B A has a saddle where B A is
  small, so at an adapter that is not exactly at a minimum this matrix is often indefinite.
- ``gauss-newton`` (generalised Gauss-Newton): J^T H_z J, with J the Jacobian of the logits and
  H_z = w (diag(p) - p p^T) the softmax cross-entropy's Hessian in the logits (w the token's weight
  1/|target tokens of its record|). Positive semi-definite everywhere, equal to the Hessian where the
  model fits its targets, and the usual choice for influence functions on networks (Martens 2020;
  Bae et al. 2022). J v comes from forward-mode AD (torch.func.jvp), J^T u from one backward pass.
"""

from __future__ import annotations

from typing import Sequence

import torch

from forgetkit.data import Example, collate
from forgetkit.losses.base import logits_of, model_inputs, shift, token_log_probs

Vector = list[torch.Tensor]
CURVATURES = ("gauss-newton", "hessian")


def per_example_loss_sum(model: torch.nn.Module, examples: Sequence[Example], pad: int,
                         device: torch.device) -> torch.Tensor:
    """sum over the examples of each one's mean target-token NLL (a graph, for differentiation)."""
    batch = {k: v.to(device) for k, v in collate(examples, pad).items()}
    log_probs, mask = token_log_probs(logits_of(model, batch), batch["labels"])
    return (-log_probs.sum(1) / mask.sum(1).clamp(min=1)).sum()


class AdapterObjective:
    """Gradients and Hessian-vector products of the mean training loss over ``params``."""

    def __init__(self, model: torch.nn.Module, params: Sequence[torch.nn.Parameter], pad_token_id: int,
                 batch_size: int = 8, weight_decay: float = 0.0, curvature: str = "gauss-newton"):
        if curvature not in CURVATURES:
            raise ValueError(f"unknown curvature '{curvature}'; choose from {', '.join(CURVATURES)}")
        self.model, self.params, self.pad = model, list(params), pad_token_id
        self.batch_size, self.weight_decay, self.curvature = batch_size, weight_decay, curvature
        by_identity = {id(p): name for name, p in model.named_parameters()}
        self.names = [by_identity[id(p)] for p in self.params]
        self.device = self.params[0].device
        self.hvp_calls = 0

    def _chunks(self, examples: Sequence[Example]):
        for start in range(0, len(examples), self.batch_size):
            yield examples[start : start + self.batch_size]

    def gradient_sum(self, examples: Sequence[Example]) -> Vector:
        """sum over ``examples`` of grad l(z) (no weight decay: it is part of H, not of the records)."""
        # float32 at least: bf16 parameters still get full-precision accumulation.
        total = [torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32)) for p in self.params]
        for chunk in self._chunks(examples):
            loss = per_example_loss_sum(self.model, chunk, self.pad, self.device)
            for acc, g in zip(total, torch.autograd.grad(loss, self.params)):
                acc += g.to(acc.dtype)
        return total

    def mean_loss(self, examples: Sequence[Example]) -> float:
        with torch.no_grad():
            total = sum(float(per_example_loss_sum(self.model, c, self.pad, self.device)) for c in self._chunks(examples))
        return total / len(examples)

    def hvp(self, examples: Sequence[Example], vector: Vector) -> Vector:
        """(curvature of (1/|examples|) sum l(z), plus weight decay) times ``vector``."""
        return self.mixture_hvp([(1.0, examples)], vector)

    def mixture_hvp(self, parts: Sequence[tuple[float, Sequence[Example]]], vector: Vector) -> Vector:
        """(sum_k share_k * curvature of part k's mean loss, plus weight decay) times ``vector``.

        The shares sum to 1: a stratified estimate of the curvature of the whole training set's mean
        loss from a few of its strata (for example the edited records at their true share of D, and
        a sample of the others standing in for the rest).
        """
        self.hvp_calls += 1
        product = self._hessian_chunk if self.curvature == "hessian" else self._gauss_newton_chunk
        out = [self.weight_decay * v for v in vector]
        for share, examples in parts:
            if not examples:
                continue
            scale = share / len(examples)
            for chunk in self._chunks(examples):
                for acc, hv in zip(out, product(chunk, vector)):
                    acc += scale * hv.to(acc.dtype)
        return out

    def _hessian_chunk(self, chunk: Sequence[Example], vector: Vector) -> Sequence[torch.Tensor]:
        loss = per_example_loss_sum(self.model, chunk, self.pad, self.device)
        grads = torch.autograd.grad(loss, self.params, create_graph=True)
        return torch.autograd.grad(grads, self.params, grad_outputs=[v.to(g.dtype) for v, g in zip(vector, grads)])

    def _gauss_newton_chunk(self, chunk: Sequence[Example], vector: Vector) -> Sequence[torch.Tensor]:
        batch = {k: v.to(self.device) for k, v in collate(chunk, self.pad).items()}
        inputs = model_inputs(batch)

        def logits_at(*theta: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(self.model, dict(zip(self.names, theta)), args=(), kwargs=inputs).logits

        primals = tuple(p.detach() for p in self.params)
        tangents = tuple(v.to(p.dtype) for v, p in zip(vector, self.params))
        logits, logits_tangent = torch.func.jvp(logits_at, primals, tangents)
        shifted, _, mask = shift(logits.detach(), batch["labels"])
        j_v = logits_tangent[:, :-1].to(shifted.dtype)
        # Each target token weighs 1/|its record's target tokens|, as in the loss.
        weight = (mask / mask.sum(1, keepdim=True).clamp(min=1)).unsqueeze(-1)
        probs = torch.softmax(shifted, dim=-1)
        h_j_v = weight * (probs * j_v - probs * (probs * j_v).sum(-1, keepdim=True))
        with torch.enable_grad():
            out = logits_of(self.model, batch)[:, :-1]
            return torch.autograd.grad(out, self.params, grad_outputs=h_j_v.to(out.dtype))
