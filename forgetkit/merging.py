"""Folding a LoRA adapter into base weights one safetensors shard at a time.

For a base bigger than memory: each shard of the base is read, every weight a LoRA module targets
gets W + s·B·A (computed in float32, stored in the weight's dtype), and the shard is written out
before the next is read. Peak memory is one shard's tensors plus the adapter, whatever the model's
size. Only plain LoRA is folded this way (no DoRA, per-module rank or alpha patterns, biases or
modules_to_save); anything else is refused so it can be merged in memory instead.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from forgetkit.errors import ForgetkitError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PEFT_PREFIX = "base_model.model."
COPIED = ("config.json", "generation_config.json")


def base_shards(model_dir: Path) -> list[str]:
    if (model_dir / INDEX).is_file():
        weight_map = json.loads((model_dir / INDEX).read_text())["weight_map"]
        return sorted(set(weight_map.values()))
    if (model_dir / SINGLE).is_file():
        return [SINGLE]
    raise ForgetkitError(f"{model_dir}: no safetensors weights to merge shard by shard")


def weight_locations(model_dir: Path) -> dict[str, str]:
    """Which shard file holds each tensor of a safetensors checkpoint."""
    if (model_dir / INDEX).is_file():
        return dict(json.loads((model_dir / INDEX).read_text())["weight_map"])
    shards = base_shards(model_dir)
    with safe_open(str(model_dir / shards[0]), framework="pt") as handle:
        return {key: shards[0] for key in handle.keys()}


def lora_deltas(adapter_dir: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float, bool]:
    """{module name: (A, B)}, the scaling s, and whether weights are stored (in, out) (GPT-2's Conv1D)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    unsupported = [key for key in ("use_dora", "lora_bias", "modules_to_save", "rank_pattern", "alpha_pattern",
                                   "layer_replication", "trainable_token_indices") if config.get(key)]
    if config.get("peft_type") != "LORA" or unsupported:
        raise ForgetkitError(f"{adapter_dir}: cannot be merged shard by shard ({', '.join(unsupported) or config.get('peft_type')}); "
                             "merge it without --by-shard")
    rank, alpha = config["r"], config["lora_alpha"]
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.weight"
            if key.endswith(marker):
                module = key[: -len(marker)].removeprefix(PEFT_PREFIX)
                factors.setdefault(module, {})[part] = tensor
    deltas = {name: (f["lora_A"], f["lora_B"]) for name, f in factors.items()}
    return deltas, scaling, bool(config.get("fan_in_fan_out"))


def merge_by_shard(model_dir: Path, adapter_dir: Path, out_dir: Path) -> dict[str, int]:
    """Write the merged model's shards, index and config into ``out_dir``; returns counts."""
    deltas, scaling, fan_in_fan_out = lora_deltas(adapter_dir)
    pending = set(deltas)
    largest = 0
    for shard in base_shards(model_dir):
        merged: dict[str, torch.Tensor] = {}
        with safe_open(str(model_dir / shard), framework="pt") as handle:
            metadata = handle.metadata() or {"format": "pt"}
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                module = key.removesuffix(".weight")
                if key.endswith(".weight") and module in deltas:
                    lora_a, lora_b = deltas[module]
                    delta = scaling * (lora_b.float() @ lora_a.float())
                    tensor = (tensor.float() + (delta.T if fan_in_fan_out else delta)).to(tensor.dtype)
                    pending.discard(module)
                merged[key] = tensor
        largest = max(largest, sum(t.numel() * t.element_size() for t in merged.values()))
        save_file(merged, str(out_dir / shard), metadata=metadata)
        del merged
    if pending:
        raise ForgetkitError(f"{adapter_dir}: targets {sorted(pending)[:3]} have no weight in {model_dir}")
    for name in (INDEX, *COPIED):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out_dir / name)
    return {"modules_merged": len(deltas), "largest_shard_bytes": largest}
