"""``forgetkit merge --gguf FORMAT -o model.gguf``: the merged model as one GGUF file for llama.cpp and
Ollama, checked by loading the written file back through transformers' GGUF loader.

The file is written to a hidden sibling, loaded back and compared with the merged model on the merge's
probe batch; only then is it written again with the check in its metadata and renamed into place.
At f32 the loaded logits must equal the merged model's to 1e-4 (a wrong tensor layout shows up
here, not in a user's llama.cpp); at f16/q8_0/q4_0 the drift is measured and recorded.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from forgetkit import registry
from forgetkit.artifacts import Metadata, atomic_file
from forgetkit.console import console
from forgetkit.errors import ForgetkitError
from forgetkit.gguf.convert import source_gguf_file
from forgetkit.gguf.export import load_gguf_model, prepare_gguf
from forgetkit.models import LoadedModel
from forgetkit.stages.common import table

F32_TOLERANCE = 1e-4


@torch.no_grad()
def logit_drift(expected: torch.Tensor, actual: torch.Tensor) -> dict[str, float]:
    """How far a re-loaded model's logits are from the merged model's on the probe batch."""
    expected, actual = expected.float(), actual.float()
    diff = (actual - expected).abs()
    log_p, log_q = expected.log_softmax(-1), actual.log_softmax(-1)
    return {
        "max_abs_logit_diff": diff.max().item(),
        "mean_abs_logit_diff": diff.mean().item(),
        "top1_agreement": (expected.argmax(-1) == actual.argmax(-1)).float().mean().item(),
        "kl_merged_to_gguf": (log_p.exp() * (log_p - log_q)).sum(-1).mean().item(),
    }


def write_merged_gguf(merged, loaded: LoadedModel, output: Path, fmt: str, metadata: Metadata,
                      probe: torch.Tensor) -> Metadata:
    if output.is_dir():
        raise ForgetkitError(f"{output}: is a folder; --gguf writes one file (for example -o model.gguf)")
    merged = merged.to(torch.float32).cpu()  # GGUF encoding runs on host float32 values
    probe = probe.cpu()
    with torch.no_grad():
        expected = merged(input_ids=probe).logits
    source = source_gguf_file(loaded.local_dir)
    started = time.perf_counter()
    prepared = prepare_gguf(merged, loaded.tokenizer, fmt, source_gguf=source, name=loaded.info.model_id)
    with atomic_file(output) as staging:
        summary = prepared.write(staging, metadata.to_json())
        written = time.perf_counter() - started
        reloaded = load_gguf_model(staging)
        with torch.no_grad():
            drift = logit_drift(expected, reloaded(input_ids=probe).logits)
        del reloaded
        if fmt == "f32" and drift["max_abs_logit_diff"] > F32_TOLERANCE:
            raise ForgetkitError(
                f"{output}: the GGUF file read back through transformers differs from the merged model by "
                f"{drift['max_abs_logit_diff']:.3g} in the logits at f32 (limit {F32_TOLERANCE}); nothing was written"
            )
        metadata.results["gguf"] = {
            "format": fmt, "architecture": summary.architecture, "tensors": summary.tensors,
            "tensor_types": summary.types, "bytes": summary.bytes, "metadata_from": summary.metadata_from,
            "source_gguf": source.name if source else None, "write_seconds": round(written, 1),
            "reloaded_through": "transformers GGUF loader", "drift": drift,
        }
        staging.unlink()
        prepared.write(staging, metadata.to_json())  # again, now with the check in its metadata
    registry.record(output)
    rows = [(key, value) for key, value in drift.items()]
    console.print(table(f"{output.name}: {fmt} GGUF read back against the merged model", ["measure", "value"], rows))
    console.print(f"[green]wrote[/] {output}  ({summary.bytes / 2**20:.1f} MiB, {summary.tensors} tensors: "
                  + ", ".join(f"{n} {t}" for t, n in summary.types.items()) + ")")
    return metadata
