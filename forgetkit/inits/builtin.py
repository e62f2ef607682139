"""Built-in init schemes: standard LoRA, PiSSA (through peft) and FILA (LoKU)."""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import torch
from peft import PeftModel

from forgetkit.adapters import iter_lora_layers, set_base_weight_out_in, base_weight_out_in
from forgetkit.errors import ForgetkitError
from forgetkit.inits.base import FisherStats, InitScheme


@dataclasses.dataclass
class StandardLora(InitScheme):
    """peft's default: A random (Kaiming), B zero, so the adapter starts as the identity edit."""

    name = "lora"


@dataclasses.dataclass
class Pissa(InitScheme):
    """PiSSA (Meng et al., 2024): the adapter starts on each weight's top singular directions.

    peft does the decomposition and writes the residual base; ``niter`` > 0 uses its fast
    randomised SVD, 0 the exact one.
    """

    name = "pissa"
    mutates_base = True
    niter: int = 4

    def lora_config_overrides(self) -> dict[str, Any]:
        return {"init_lora_weights": f"pissa_niter_{self.niter}" if self.niter > 0 else "pissa"}


@dataclasses.dataclass
class Fila(InitScheme):
    """FILA (Cha et al., ICLR 2025): Fisher-weighted low-rank approximation of each target weight.

    With forget/retain Fisher sums F_f, F_r over N_f, N_r tokens, relative importance
    I = (F_f/N_f) / (eps + F_r/N_r) and row weights w_i = sqrt(sum_j I_ij). A rank-r SVD of
    diag(w) W gives U, S, V; with scaling s = alpha/r the adapter starts at
    A0 = (V sqrt(S/s))^T, B0 = diag(1/(w + eps)) U sqrt(S/s), and the base becomes W - s B0 A0,
    so the model computes the original function while the adapter sits on the weights that
    matter most for the forget set relative to the retain set.
    """

    name = "fila"
    needs_fisher = True
    mutates_base = True
    eps: float = 1e-5
    niter: int = 4  # power iterations of torch.svd_lowrank

    def initialise(self, model: PeftModel, fisher: FisherStats | None) -> None:
        if fisher is None:
            raise ForgetkitError("init scheme 'fila' needs a Fisher artifact (--fisher)")
        for name, layer in iter_lora_layers(model):
            if name not in fisher.forget or (fisher.retain and name not in fisher.retain):
                raise ForgetkitError(f"Fisher artifact has no entry for target module '{name}'")
            forget_f = fisher.forget[name].float()
            # No retain Fisher (fisher run without --retain): importance from the forget set alone.
            retain_f = fisher.retain[name].float() if fisher.retain else torch.zeros_like(forget_f)
            a0, b0 = fila_factors(
                base_weight_out_in(layer).float(),
                forget_f,
                retain_f,
                fisher.forget_tokens,
                fisher.retain_tokens,
                rank=layer.r["default"],
                scaling=layer.scaling["default"],
                eps=self.eps,
                niter=self.niter,
                fan_in_fan_out=layer.fan_in_fan_out,
                seed=module_seed(name),
            )
            with torch.no_grad():
                layer.lora_A["default"].weight.copy_(a0)
                layer.lora_B["default"].weight.copy_(b0)
                residual = base_weight_out_in(layer).float() - layer.scaling["default"] * (b0 @ a0)
                set_base_weight_out_in(layer, residual)


OVERSAMPLE = 8


def module_seed(name: str) -> int:
    return zlib.crc32(name.encode())


def fila_factors(
    weight: torch.Tensor,
    fisher_forget: torch.Tensor,
    fisher_retain: torch.Tensor,
    forget_tokens: int,
    retain_tokens: int,
    *,
    rank: int,
    scaling: float,
    eps: float = 1e-5,
    niter: int = 4,
    fan_in_fan_out: bool = False,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A0, B0) for one (out, in) weight; Fisher tensors come in the module's own layout.

    ``seed`` fixes the randomised SVD's sketch for this weight alone, so the factors do not depend on
    which layers were initialised before it (in memory, or one layer at a time).
    """
    if fan_in_fan_out:  # GPT-2's Conv1D keeps its weight (and so its Fisher) as (in, out)
        fisher_forget, fisher_retain = fisher_forget.T, fisher_retain.T
    importance = (fisher_forget / max(forget_tokens, 1)) / (eps + fisher_retain / max(retain_tokens, 1))
    row_weight = importance.sum(dim=1).sqrt()
    with torch.random.fork_rng(devices=[weight.device] if weight.is_cuda else []):
        if seed is not None:
            torch.manual_seed(seed)
        # A few extra sketch directions (oversampling) make the top-r subspace accurate even at r = 1.
        q = min(rank + OVERSAMPLE, *weight.shape)
        u, s, v = torch.svd_lowrank(row_weight[:, None] * weight, q=q, niter=niter)
        u, s, v = u[:, :rank], s[:rank], v[:, :rank]
    root = (s / scaling).sqrt()
    a0 = (v * root).T
    b0 = (1.0 / (row_weight + eps))[:, None] * (u * root)
    return a0.contiguous(), b0.contiguous()
