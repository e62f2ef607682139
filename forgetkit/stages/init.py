"""``forgetkit init``: build the starting LoRA adapter with a registered init scheme (FILA by default)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from forgetkit.adapters import build_peft_model, lora_config
from forgetkit import registry
from forgetkit.artifacts import Metadata, atomic_folder, check_artifact, input_record, load_tensor_artifact, write_folder_metadata
from forgetkit.console import console
from forgetkit.errors import ForgetkitError
from forgetkit.inits.base import FisherStats
from forgetkit.inits.builtin import Fila, fila_factors, module_seed
from forgetkit.merging import PEFT_PREFIX, weight_locations
from forgetkit.models import default_device, describe_model, discover_targets, load_model, peak_memory_mib
from forgetkit.plugins import load_init

PROBE_TOKENS = 32


@dataclasses.dataclass
class InitParams:
    scheme: str = "fila"
    rank: int = 8
    alpha: float | None = None  # default 2 * rank, as in the LoKU paper
    targets: str | None = None  # default: the Fisher's targets, or every linear layer
    scheme_params: dict[str, str] = dataclasses.field(default_factory=dict)
    model_dtype: str = "auto"
    seed: int = 0
    by_layer: bool = False  # FILA one weight at a time: the memory of a layer, not of the model

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else 2 * self.rank)


def read_fisher(path: str | Path, base_info, device: torch.device) -> tuple[FisherStats, Metadata]:
    meta = check_artifact(path, "fisher", base_info)
    tensors = load_tensor_artifact(path, device=device)
    split = {"forget": {}, "retain": {}}
    for key, value in tensors.items():
        part, _, module = key.partition("/")
        split.setdefault(part, {})[module] = value
    stats = FisherStats(
        forget=split["forget"],
        retain=split["retain"],
        forget_tokens=int(meta.results["forget_tokens"]),
        retain_tokens=int(meta.results["retain_tokens"]),
    )
    return stats, meta


def run_init(
    model_ref: str, output: str | Path, params: InitParams, *, fisher: str | None = None, trust_remote_code: bool = False
) -> Metadata:
    if params.rank < 1:
        raise ForgetkitError(f"--rank must be at least 1, got {params.rank}")
    scheme = load_init(params.scheme, params.scheme_params)
    registry.ensure_ready()
    if params.by_layer:
        return _init_by_layer(model_ref, Path(output), params, scheme, fisher, trust_remote_code)
    loaded = load_model(model_ref, dtype=params.model_dtype, trust_remote_code=trust_remote_code)
    device = next(loaded.model.parameters()).device

    stats, fisher_meta = None, None
    if fisher is not None:
        stats, fisher_meta = read_fisher(fisher, loaded.info, device)
    elif scheme.needs_fisher:
        raise ForgetkitError(f"init scheme '{params.scheme}' needs a Fisher artifact (--fisher)")

    if params.targets is not None:
        targets = discover_targets(loaded.model, params.targets)
    elif fisher_meta is not None:
        targets = list(fisher_meta.results["targets"])
    else:
        targets = discover_targets(loaded.model, "all")

    # The init must not change the function: measure that on a random probe.
    generator = torch.Generator().manual_seed(params.seed)
    probe = torch.randint(0, loaded.model.config.vocab_size, (2, PROBE_TOKENS), generator=generator).to(device)
    with torch.no_grad():
        before = loaded.model(input_ids=probe).logits.float()

    torch.manual_seed(params.seed)
    config = lora_config(targets, params.rank, params.lora_alpha, **scheme.lora_config_overrides())
    model = build_peft_model(loaded.model, config)
    scheme.initialise(model, stats)
    with torch.no_grad():
        drift = (model(input_ids=probe).logits.float() - before).abs().max().item()

    # Saved with init_lora_weights=True so loading it anywhere reads A0, B0 as they are.
    model.peft_config["default"].init_lora_weights = True
    metadata = Metadata(
        stage="init",
        base_model=loaded.info,
        inputs={"fisher": input_record(fisher)} if fisher else {},
        parameters={**dataclasses.asdict(params), "lora_alpha": params.lora_alpha},
        results={"targets": targets, "mutates_base": scheme.mutates_base, "function_drift_max_abs": drift},
    )
    with atomic_folder(output) as staging:
        model.save_pretrained(str(staging))
        write_folder_metadata(staging, metadata)
    registry.record(output)
    console.print(
        f"[green]wrote[/] {output}  (scheme {params.scheme}, rank {params.rank}, alpha {params.lora_alpha:g}, "
        f"{len(targets)} modules, max logit drift {drift:.2e})"
    )
    return metadata


def _init_by_layer(model_ref: str, output: Path, params: InitParams, scheme, fisher: str | None,
                   trust_remote_code: bool) -> Metadata:
    """FILA without loading the model: each target weight is read from its shard, factored with its
    Fisher rows, and dropped. The structure (which modules are targets, which are GPT-2 Conv1D)
    comes from a weightless copy of the model on the meta device."""
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    if not isinstance(scheme, Fila):
        raise ForgetkitError(f"--by-layer supports the fila scheme, not '{params.scheme}'")
    if fisher is None:
        raise ForgetkitError("init scheme 'fila' needs a Fisher artifact (--fisher)")
    model_dir, info = describe_model(model_ref)
    fisher_meta = check_artifact(fisher, "fisher", info)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    targets = (discover_targets(skeleton, params.targets) if params.targets is not None
               else list(fisher_meta.results["targets"]))
    modules = dict(skeleton.named_modules())
    locations = weight_locations(model_dir)
    lora = lora_config(targets, params.rank, params.lora_alpha)
    scaling = params.lora_alpha / params.rank
    device = default_device()
    forget_tokens, retain_tokens = int(fisher_meta.results["forget_tokens"]), int(fisher_meta.results["retain_tokens"])
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(fisher), framework="pt") as stats:
        keys = set(stats.keys())
    for name in targets:
        weight_key = f"{name}.weight"
        if weight_key not in locations or f"forget/{name}" not in keys:
            raise ForgetkitError(f"{model_ref}: no weight or Fisher entry for target module '{name}'")
        # Files are opened per layer: safetensors maps them, and pages read stay resident while open.
        with safe_open(str(model_dir / locations[weight_key]), framework="pt", device=str(device)) as shard:
            weight = shard.get_tensor(weight_key).float()
        with safe_open(str(fisher), framework="pt", device=str(device)) as stats:
            forget_f = stats.get_tensor(f"forget/{name}").float()
            retain_f = stats.get_tensor(f"retain/{name}").float() if f"retain/{name}" in keys else torch.zeros_like(forget_f)
        fan_in_fan_out = isinstance(modules[name], Conv1D)
        a0, b0 = fila_factors(weight.T if fan_in_fan_out else weight, forget_f, retain_f, forget_tokens, retain_tokens,
                              rank=params.rank, scaling=scaling, eps=scheme.eps, niter=scheme.niter,
                              fan_in_fan_out=fan_in_fan_out, seed=module_seed(name))
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a0.cpu()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b0.cpu()
        del weight, forget_f, retain_f
    lora.fan_in_fan_out = any(isinstance(modules[name], Conv1D) for name in targets)
    lora.base_model_name_or_path = model_ref
    lora.init_lora_weights = True
    metadata = Metadata(
        stage="init",
        base_model=info,
        inputs={"fisher": input_record(fisher)},
        parameters={**dataclasses.asdict(params), "lora_alpha": params.lora_alpha},
        results={"targets": targets, "mutates_base": True, "function_drift_max_abs": None,
                 "peak_memory_mib": round(peak_memory_mib(device), 1)},
    )
    with atomic_folder(output) as staging:
        lora.save_pretrained(str(staging))
        save_file(tensors, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
        write_folder_metadata(staging, metadata)
    registry.record(output)
    console.print(f"[green]wrote[/] {output}  (fila layer by layer, rank {params.rank}, {len(targets)} modules)")
    return metadata
