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
from forgetkit.models import discover_targets, load_model
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
