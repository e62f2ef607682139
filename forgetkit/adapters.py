"""LoRA adapters through peft: building, residual bases for non-zero inits, reference passes, saving.

Design: an init artifact is a plain PEFT adapter holding the starting (A0, B0). For schemes that
start away from zero (FILA, PiSSA) the trainer rebuilds the residual base W - s B0 A0 in memory,
and at save time peft's own PiSSA mechanism (``path_initial_model_for_weight_conversion``) turns
the trained adapter into a rank-2r LoRA of the difference, which applies to the ORIGINAL base.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel

REFERENCE_ADAPTER = "reference"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def lora_config(targets: list[str], rank: int, alpha: float, dropout: float = 0.0, **overrides: Any) -> LoraConfig:
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        **overrides,
    )


def iter_lora_layers(model: PeftModel) -> Iterator[tuple[str, LoraLayer]]:
    """(name in the base model, layer) for every LoRA-wrapped module."""
    prefix = "base_model.model."
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            yield name[len(prefix):] if name.startswith(prefix) else name, module


def base_weight_out_in(layer: LoraLayer) -> torch.Tensor:
    weight = layer.get_base_layer().weight
    return weight.T if layer.fan_in_fan_out else weight


def set_base_weight_out_in(layer: LoraLayer, value: torch.Tensor) -> None:
    weight = layer.get_base_layer().weight
    with torch.no_grad():
        weight.copy_((value.T if layer.fan_in_fan_out else value).to(weight.dtype))


def subtract_adapter_from_base(model: PeftModel, adapter: str = "default") -> None:
    """W <- W - s B A for every layer: rebuild the residual base of a non-zero init."""
    for _, layer in iter_lora_layers(model):
        delta = layer.scaling[adapter] * (layer.lora_B[adapter].weight.float() @ layer.lora_A[adapter].weight.float())
        set_base_weight_out_in(layer, base_weight_out_in(layer).float() - delta)


def build_peft_model(base: PreTrainedModel, config: LoraConfig) -> PeftModel:
    return get_peft_model(base, config)


def load_init_adapter(base: PreTrainedModel, init_dir: str | Path, mutates_base: bool, trainable: bool = True) -> PeftModel:
    model = PeftModel.from_pretrained(base, str(init_dir), is_trainable=trainable)
    if mutates_base:
        subtract_adapter_from_base(model)
    return model


def add_reference_adapter(model: PeftModel, init_dir: str | Path) -> None:
    """Load the starting adapter a second time, frozen, so residual + it = the original model."""
    model.load_adapter(str(init_dir), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    model.set_adapter("default")


@contextmanager
def reference_mode(model: PeftModel) -> Iterator[None]:
    """Run the frozen original function: adapters off, or the frozen starting adapter on a residual base."""
    if REFERENCE_ADAPTER in model.peft_config:
        model.base_model.set_adapter(REFERENCE_ADAPTER)
        try:
            yield
        finally:
            # set_adapter marks the active adapter trainable; put the flags back as they were.
            model.base_model.set_adapter("default")
            for name, param in model.named_parameters():
                if f".{REFERENCE_ADAPTER}." in name:
                    param.requires_grad_(False)
    else:
        with model.disable_adapter():
            yield


def save_adapter(model: PeftModel, out_dir: Path, init_dir: Path | None, mutates_base: bool,
                 initial_a: dict[str, torch.Tensor] | None = None) -> None:
    """Save the trained ``default`` adapter as a standard PEFT folder for the original base.
    ``initial_a`` (module name -> A): starting A matrices that differ from the init folder's (projected
    by null-space confinement, ``forgetkit.nullspace``); the conversion is made against them."""
    if not mutates_base:
        model.save_pretrained(str(out_dir), selected_adapters=["default"])
        return
    # peft rewrites the config of the initial adapter it converts against; give it a copy so the
    # user's init artifact (and its recorded hash) stays untouched.
    with tempfile.TemporaryDirectory() as scratch:
        initial = Path(scratch) / "initial"
        initial.mkdir()
        for name in ADAPTER_FILES:
            shutil.copy2(Path(init_dir) / name, initial / name)
        if initial_a:
            weights = load_file(str(initial / "adapter_model.safetensors"))
            for module, a in initial_a.items():
                key = f"base_model.model.{module}.lora_A.weight"
                if key not in weights:
                    raise KeyError(f"{init_dir}: no starting A for {module}")
                weights[key] = a.detach().to("cpu", weights[key].dtype).contiguous()
            save_file(weights, str(initial / "adapter_model.safetensors"))
        model.save_pretrained(
            str(out_dir), selected_adapters=["default"], path_initial_model_for_weight_conversion=str(initial)
        )
