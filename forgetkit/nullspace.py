"""Keep a LoRA adapter off the input directions that data to be preserved uses (null-space confinement).

A LoRA layer adds B A x to a linear layer's output. If every row of A is orthogonal to the directions
along which the preserved data's inputs x lie, the adapter adds (almost) nothing on that data, whatever
B becomes: the idea of null-space constrained editing (AlphaEdit, Fang et al., ICLR 2025), applied to
the adapter's input side. Per layer we take the second moment C = sum x x^T of its inputs over the
preserved examples' real tokens, and let A read only the ``free_share`` of eigen-directions of C with the
smallest eigenvalues (a share of the directions, not of the trace: in these models a few outlier
dimensions hold most of the trace). A is projected once at the start and again after every optimiser
step, so the adapter that is saved is a plain LoRA adapter whose A already lies in that subspace.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from forgetkit.adapters import base_weight_out_in, iter_lora_layers, set_base_weight_out_in
from forgetkit.data import Example, batches, collate


@torch.no_grad()
def input_moments(model: nn.Module, examples: Sequence[Example], pad_token_id: int, batch_size: int = 8,
                  adapters_on: bool = False) -> dict[str, torch.Tensor]:
    """Per LoRA layer: sum over the examples' real tokens of x x^T for the layer's input x (float64),
    measured on the base model (adapters switched off), or with the adapters on (``adapters_on``: after
    an init that rewrote the base, base + starting adapter is the original model)."""
    layers = dict(iter_lora_layers(model))
    moments: dict[str, torch.Tensor] = {}
    state = {}

    def recorder(name: str):
        def hook(module, inputs, output):
            x = inputs[0].reshape(-1, inputs[0].shape[-1])[state["mask"]].double()
            moments[name] = moments.get(name, 0) + x.T @ x
        return hook

    handles = [layer.get_base_layer().register_forward_hook(recorder(name)) for name, layer in layers.items()]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with contextlib.nullcontext() if adapters_on else model.disable_adapter():
            for group in batches(examples, batch_size):
                batch = {k: v.to(device) for k, v in collate(group, pad_token_id).items()}
                state["mask"] = batch["attention_mask"].reshape(-1).bool()
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return moments


class NullSpaceConfinement:
    """The per-layer directions each adapter's A must not read, and the projection that enforces it."""

    def __init__(self, model: nn.Module, moments: dict[str, torch.Tensor], free_share: float,
                 residual_base: bool = False):
        if not 0.0 < free_share < 1.0:
            raise ValueError("free_share must be between 0 and 1")
        self.free_share = free_share
        self.weights: list[torch.Tensor] = []
        self.bases: list[torch.Tensor] = []
        self.leak: dict[str, float] = {}  # the share of C's trace left in the free directions
        self.initial_a: dict[str, torch.Tensor] = {}  # with a residual base: each starting A as projected
        for name, layer in iter_lora_layers(model):
            values, vectors = torch.linalg.eigh(moments[name])  # ascending
            free = int(round(free_share * values.numel()))
            blocked = vectors[:, free:]
            weight = layer.lora_A["default"].weight
            basis = blocked.to(device=weight.device, dtype=weight.dtype)
            self.weights.append(weight)
            self.bases.append(basis)
            positive = values.clamp(min=0)
            self.leak[name] = float(positive[:free].sum() / positive.sum().clamp(min=1e-30))
            if residual_base:
                self._keep_function(layer, basis)
        self.project()
        for (name, _), weight in zip(iter_lora_layers(model), self.weights):
            if residual_base:
                self.initial_a[name] = weight.detach().clone()

    @staticmethod
    @torch.no_grad()
    def _keep_function(layer, basis: torch.Tensor) -> None:
        """The base was rewritten to W - s B A (FILA, PiSSA): hand the part of s B A that the projection
        is about to take off the adapter to the base, so base + adapter stays the original W. Any other
        adapter on the layer starting from the same A (the frozen reference copy) is projected with it."""
        a = layer.lora_A["default"].weight
        removed = (a.float() @ basis.float()) @ basis.float().T
        delta = layer.scaling["default"] * (layer.lora_B["default"].weight.float() @ removed)
        set_base_weight_out_in(layer, base_weight_out_in(layer).float() + delta)
        for other, module in layer.lora_A.items():
            if other != "default":
                module.weight.sub_((module.weight @ basis) @ basis.T)

    @torch.no_grad()
    def project(self) -> None:
        """A <- A (I - U U^T) for every confined layer (U: the blocked directions)."""
        for weight, basis in zip(self.weights, self.bases):
            weight.sub_((weight @ basis) @ basis.T)

    @contextlib.contextmanager
    def after_every_step(self) -> Iterator["NullSpaceConfinement"]:
        """Project after every optimiser step taken inside the block (any optimiser: the training loop
        owns its own)."""
        handle = register_optimizer_step_post_hook(lambda *_: self.project())
        try:
            yield self
        finally:
            handle.remove()


def confine(model: nn.Module, examples: Sequence[Example], pad_token_id: int, free_share: float,
            residual_base: bool = False) -> NullSpaceConfinement:
    """Measure the preserved ``examples``' inputs to every LoRA layer and confine the adapters to the
    ``free_share`` of directions those inputs use least (A projected now; use ``after_every_step``
    around training).

    ``residual_base``: the init rewrote the base to W - s B0 A0 (FILA, PiSSA). The inputs are then measured
    on base + starting adapter (the original model), the part of s B0 A0 the projection removes goes back
    into the base so the starting function is unchanged, and ``initial_a`` keeps the projected A0s: the
    finished adapter is converted against (B0, A0 projected), the starting point it really trained from."""
    moments = input_moments(model, examples, pad_token_id, adapters_on=residual_base)
    return NullSpaceConfinement(model, moments, free_share, residual_base)
