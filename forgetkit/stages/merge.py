"""``forgetkit merge``: fold an adapter into the base weights and save a standalone model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoTokenizer

from forgetkit import registry
from forgetkit.artifacts import Metadata, atomic_folder, check_artifact, input_record, write_folder_metadata
from forgetkit.console import console
from forgetkit.errors import ForgetkitError
from forgetkit.hub.resolve import local_artifact
from forgetkit.merging import merge_by_shard
from forgetkit.models import describe_model, load_model, peak_memory_mib

PROBE_SHAPE = (2, 32)


@dataclasses.dataclass
class MergeParams:
    max_shard_size: str = "2GB"
    model_dtype: str = "auto"
    seed: int = 0
    by_shard: bool = False  # fold shard by shard: memory of one shard, not of the model
    gguf: str | None = None  # write one GGUF file of this format (f32, f16, q8_0, q4_0) instead of a folder


def _merge_by_shard(model_ref: str, adapter: str, output: Path, params: MergeParams, trust_remote_code: bool) -> Metadata:
    model_dir, info = describe_model(model_ref)
    adapter_meta = check_artifact(adapter, "unlearn", info)
    with atomic_folder(output) as staging:
        counts = merge_by_shard(model_dir, Path(adapter), staging)
        AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code).save_pretrained(str(staging))
        metadata = Metadata(
            stage="merge",
            base_model=info,
            inputs={"adapter": input_record(adapter)},
            parameters=dataclasses.asdict(params),
            results={**counts, "peak_memory_mib": round(peak_memory_mib(torch.device("cpu")), 1),
                     "adapter_stage_parameters": adapter_meta.parameters},
        )
        write_folder_metadata(staging, metadata)
    registry.record(output)
    console.print(f"[green]wrote[/] {output}  ({counts['modules_merged']} modules folded shard by shard)")
    return metadata


def tolerance_for(dtype: torch.dtype, scale: float) -> float:
    """How far merged logits may drift from adapter logits: rounding of the summed weights only."""
    relative = 1e-4 if dtype == torch.float32 else 2e-2
    return relative * max(1.0, scale)


def run_merge(
    model_ref: str, adapter: str, output: str | Path, params: MergeParams, *, trust_remote_code: bool = False
) -> Metadata:
    adapter = local_artifact(adapter)
    registry.ensure_ready()
    if params.gguf is not None:
        from forgetkit.gguf.export import FORMATS

        if params.gguf not in FORMATS:
            raise ForgetkitError(f"--gguf must be one of {', '.join(FORMATS)}, not '{params.gguf}'")
        if params.by_shard:
            raise ForgetkitError("--gguf writes one file from the merged model in memory; drop --by-shard")
    if params.by_shard:
        return _merge_by_shard(model_ref, adapter, Path(output), params, trust_remote_code)
    loaded = load_model(model_ref, dtype=params.model_dtype, trust_remote_code=trust_remote_code)
    adapter_meta = check_artifact(adapter, "unlearn", loaded.info)
    model = PeftModel.from_pretrained(loaded.model, adapter)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(params.seed)
    probe = torch.randint(0, loaded.model.config.vocab_size, PROBE_SHAPE, generator=generator).to(device)
    with torch.no_grad():
        expected = model(input_ids=probe).logits.float()
        merged = model.merge_and_unload()
        actual = merged(input_ids=probe).logits.float()
    drift = (actual - expected).abs().max().item()
    limit = tolerance_for(next(merged.parameters()).dtype, expected.abs().max().item())
    if drift > limit:
        raise ForgetkitError(f"{adapter}: merged model differs from the adapter model by {drift:.3g} (limit {limit:.3g})")

    metadata = Metadata(
        stage="merge",
        base_model=loaded.info,
        inputs={"adapter": input_record(adapter)},
        parameters=dataclasses.asdict(params),
        results={"probe_max_abs_diff": drift, "adapter_stage_parameters": adapter_meta.parameters},
    )
    if params.gguf is not None:
        from forgetkit.stages.merge_gguf import write_merged_gguf

        return write_merged_gguf(merged, loaded, Path(output), params.gguf, metadata, probe)
    tokenizer = AutoTokenizer.from_pretrained(loaded.local_dir, trust_remote_code=trust_remote_code)
    with atomic_folder(output) as staging:
        merged.save_pretrained(str(staging), max_shard_size=params.max_shard_size)
        tokenizer.save_pretrained(str(staging))
        write_folder_metadata(staging, metadata)
    registry.record(output)
    console.print(f"[green]wrote[/] {output}  (probe max |Δlogit| {drift:.2e})")
    return metadata
