"""Weight attacks: the audited model with its weights rounded, as a deployment would round them.

- ``int8``/``int4`` (the ``quantize`` attack): every linear weight but the output head rounded to
  symmetric integers with one scale per output channel (round-to-nearest, as weight-only PTQ does):
  small unlearning updates can round away (Zhang et al., ICLR 2025);
- ``nf4``: 4-bit NormalFloat with one absmax scale per 64 weights, through bitsandbytes' own
  quantiser and dequantiser (``bitsandbytes.functional.quantize_4bit``), the format QLoRA and
  ``load_in_4bit`` use; every linear weight but the output head, as ``Linear4bit`` replaces them;
- ``gguf-q8_0``/``gguf-q4_0``: the model exactly as a llama.cpp user would get it, written as a GGUF
  file of that format by the ``gguf`` package's quantisers and read back through transformers'
  GGUF loader.

Each works on a fresh copy of the audited model (the variant's ``materialise``); the audited model is
never changed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers.pytorch_utils import Conv1D

from forgetkit.errors import ForgetkitError
from forgetkit.models import LoadedModel, is_adaptable

GGUF_FORMATS = {"gguf-q8_0": "q8_0", "gguf-q4_0": "q4_0"}
NF4_BLOCK = 64


def _rounded_layers(model: torch.nn.Module):
    head = model.get_output_embeddings()
    return [m for m in model.modules() if is_adaptable(m) and m is not head]


@torch.no_grad()
def fake_quantise(model: torch.nn.Module, bits: int) -> int:
    """Round every linear weight but the output head to ``bits``-bit symmetric integers with one
    scale per output channel, in place; returns the number of weights rounded."""
    largest = 2 ** (bits - 1) - 1
    layers = _rounded_layers(model)
    for module in layers:
        weight = module.weight.data.float()
        in_dim = 0 if isinstance(module, Conv1D) else 1  # Conv1D stores (in, out)
        scale = weight.abs().amax(dim=in_dim, keepdim=True).clamp(min=1e-12) / largest
        module.weight.data.copy_((weight / scale).round().clamp(-largest - 1, largest) * scale)
    return len(layers)


def bitsandbytes_functional():
    try:
        import bitsandbytes.functional as functional
    except ImportError as error:
        raise ForgetkitError("the nf4 attack needs bitsandbytes: pip install bitsandbytes") from error
    return functional


@torch.no_grad()
def nf4_quantise(model: torch.nn.Module) -> int:
    """Every linear weight but the output head through bitsandbytes' NF4 quantiser and back, in place
    (the weights a ``load_in_4bit`` model computes with); returns the number of weights rounded."""
    functional = bitsandbytes_functional()
    layers = _rounded_layers(model)
    for module in layers:
        weight = module.weight.data
        packed, state = functional.quantize_4bit(weight.float().contiguous(), blocksize=NF4_BLOCK, quant_type="nf4")
        module.weight.data.copy_(functional.dequantize_4bit(packed, state).to(weight.dtype).reshape(weight.shape))
    return len(layers)


def through_gguf(model: torch.nn.Module, loaded: LoadedModel, fmt: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``model`` written as a GGUF file of format ``fmt`` in a temporary folder and read back through
    transformers' GGUF loader, on the device it came from."""
    from forgetkit.gguf.convert import source_gguf_file
    from forgetkit.gguf.export import load_gguf_model, prepare_gguf

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    prepared = prepare_gguf(model.to(torch.float32).cpu(), loaded.tokenizer, fmt,
                            source_gguf=source_gguf_file(loaded.local_dir))
    del model
    with tempfile.TemporaryDirectory(prefix="forgetkit-gguf-") as folder:
        summary = prepared.write(Path(folder) / f"attack-{fmt}.gguf")
        reloaded = load_gguf_model(Path(summary.path)).to(device=device, dtype=dtype)
    return reloaded, {"tensor_types": summary.types, "bytes": summary.bytes}


WEIGHT_ATTACKS = ("int8", "int4", "nf4", *GGUF_FORMATS)


def rounded_model(rounding: str, model: torch.nn.Module, loaded: LoadedModel) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``model`` (a fresh copy, changed in place where it can be) rounded as ``rounding`` says."""
    if rounding in GGUF_FORMATS:
        return through_gguf(model, loaded, GGUF_FORMATS[rounding])
    if rounding == "nf4":
        return model, {"layers": nf4_quantise(model), "block_size": NF4_BLOCK, "library": "bitsandbytes"}
    return model, {"layers": fake_quantise(model, int(rounding.removeprefix("int")))}
