"""Write a transformers model as a GGUF file that llama.cpp and Ollama run, through the ``gguf``
package: its writer, its quantisers and its tensor name maps.

What llama.cpp expects and transformers' GGUF loader undoes, done here in the forward direction:
- tensor names from gguf's own map for the architecture (``blk.N.attn_q.weight`` ...);
- Llama's query and key rows permuted into llama.cpp's rotary layout;
- Gemma's RMSNorm weights stored as 1 + w (llama.cpp's Gemma norm multiplies by the stored weight);
- the model's hyperparameters under llama.cpp's keys: copied from the GGUF file the base came from
  when there is one (so every llama.cpp-specific key survives), else derived from the config through
  transformers' own GGUF key map; the tokenizer and chat template likewise (from the source file, or
  built from a byte-level BPE ``tokenizer.json``).

Quantisation: ``f32`` and ``f16`` keep every matrix at that precision; ``q8_0`` rounds every matrix to
Q8_0; ``q4_0`` rounds every linear layer to Q4_0 and keeps the token embedding (and an untied output
head) at Q8_0, as llama.cpp's quantiser keeps the output matrix at higher precision (Q6_K, which
gguf-py cannot write). 1-D tensors (norms, biases) stay float32. A matrix whose rows do not split
into the format's 32-value blocks is kept at float16.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from forgetkit.errors import ForgetkitError

FORMATS = ("f32", "f16", "q8_0", "q4_0")
METADATA_KEY = "forgetkit.metadata"
# transformers model_type -> llama.cpp architecture name; each has a tested export path.
ARCHITECTURES = {"llama": "llama", "gemma3_text": "gemma3"}
BLOCK = 32  # values per block in Q8_0 and Q4_0


@dataclasses.dataclass
class ExportSummary:
    path: str
    format: str
    architecture: str
    tensors: int
    types: dict[str, int]  # GGML type name -> tensor count
    bytes: int
    metadata_from: str  # "source-gguf" or "config"


def _qtypes():
    from gguf import GGMLQuantizationType as Q

    return {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}


def _file_type(fmt: str) -> int:
    from gguf import LlamaFileType as F

    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "q8_0": F.MOSTLY_Q8_0, "q4_0": F.MOSTLY_Q4_0}[fmt]


def gguf_architecture(model: PreTrainedModel) -> str:
    model_type = model.config.model_type
    if model_type not in ARCHITECTURES:
        raise ForgetkitError(
            f"GGUF export supports {', '.join(sorted(ARCHITECTURES))} models, not '{model_type}'"
        )
    return ARCHITECTURES[model_type]


# --------------------------------------------------------------------------- tensors


def llama_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotary halves -> llama.cpp's interleaved pairs, per head (the inverse of transformers'
    ``_reverse_permute_weights``)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(model: PreTrainedModel, arch: str) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in llama.cpp's layout) for every tensor llama.cpp reads."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch_enum = next(key for key, value in MODEL_ARCH_NAMES.items() if value == arch)
    config = model.config
    name_map = get_tensor_name_map(arch_enum, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out = []
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when the file has no output.weight
        stem, _, suffix = hf_name.rpartition(".")
        gguf_stem = name_map.get_name(stem)
        if gguf_stem is None:
            if "rotary_emb" in hf_name:
                continue  # recomputed from the rope keys
            raise ForgetkitError(f"GGUF export: no GGUF name for tensor {hf_name} of this {arch} model")
        name = f"{gguf_stem}.{suffix}"
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if arch == "llama" and suffix == "weight":
            if gguf_stem.endswith(".attn_q"):
                data = llama_permute(data, config.num_attention_heads)
            elif gguf_stem.endswith(".attn_k"):
                data = llama_permute(data, config.num_key_value_heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            data = data + 1.0
        out.append((name, np.ascontiguousarray(data)))
    return out


def storage_type(name: str, data: np.ndarray, fmt: str):
    """The GGML type a tensor is stored as under ``fmt``."""
    from gguf import GGMLQuantizationType as Q

    if data.ndim < 2 or fmt == "f32":
        return Q.F32
    if fmt == "f16":
        return Q.F16
    if data.shape[-1] % BLOCK:
        return Q.F16
    if fmt == "q4_0" and name.split(".")[0] in ("token_embd", "output"):
        return Q.Q8_0
    return _qtypes()[fmt]


def encode_tensor(data: np.ndarray, qtype) -> np.ndarray:
    from gguf import GGMLQuantizationType as Q, quants

    if qtype == Q.F32:
        return data.astype(np.float32)
    if qtype == Q.F16:
        return data.astype(np.float16)
    return quants.quantize(data.astype(np.float32), qtype)


# --------------------------------------------------------------------------- key-value metadata


def _source_fields(source: Path) -> list[tuple[str, Any, Any, Any]]:
    """(key, value, type, sub type) of every metadata field of the source GGUF but the ones that
    describe its own storage."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(source))
    fields = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.file_type", "general.quantization_version",
                                               "general.architecture", METADATA_KEY):
            continue
        main = field.types[0]
        sub = field.types[-1] if main == GGUFValueType.ARRAY else None
        value = field.contents()
        fields.append((key, value, main, sub))
    return fields


def _config_value(config, attribute: str):
    value = getattr(config, attribute, None)
    if value is None and attribute == "rope_theta":
        value = (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    return value


def _config_fields(model: PreTrainedModel, arch: str) -> list[tuple[str, Any, Any, Any]]:
    """llama.cpp's hyperparameter keys from the config, through transformers' own GGUF key map."""
    from gguf import GGUFValueType as V
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    config = model.config
    fields = []
    for gguf_key, attribute in GGUF_CONFIG_MAPPING[arch].items():
        if attribute is None:
            continue
        value = _config_value(config, attribute)
        if value is None or isinstance(value, (list, dict)):
            continue
        kind = V.FLOAT32 if isinstance(value, float) else V.UINT32
        fields.append((f"{arch}.{gguf_key}", value, kind, None))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    keys = {f[0] for f in fields}
    if f"{arch}.rope.dimension_count" not in keys:
        fields.append((f"{arch}.rope.dimension_count", head_dim, V.UINT32, None))
    if arch == "gemma3":
        fields.append((f"{arch}.attention.value_length", head_dim, V.UINT32, None))
    return fields


def _tokenizer_fields(tokenizer: PreTrainedTokenizerBase) -> list[tuple[str, Any, Any, Any]]:
    """llama.cpp's tokenizer keys for a byte-level BPE tokenizer (GPT-2 style), the one kind a
    ``tokenizer.json`` maps to without guessing."""
    from gguf import GGUFValueType as V

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or (spec.get("pre_tokenizer") or {}).get("type") not in ("ByteLevel", "Sequence"):
        raise ForgetkitError("GGUF export from a transformers folder supports byte-level BPE tokenizers only; "
                             "start from the model's GGUF file to carry its tokenizer over")
    vocab = tokenizer.get_vocab()
    tokens = [""] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    special = {t.content for t in tokenizer.backend_tokenizer.get_added_tokens_decoder().values() if t.special}
    token_types = [3 if t in special else 1 for t in tokens]  # 3: control, 1: normal
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    fields = [
        ("tokenizer.ggml.model", "gpt2", V.STRING, None),
        ("tokenizer.ggml.pre", "gpt2", V.STRING, None),
        ("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING),
        ("tokenizer.ggml.token_type", token_types, V.ARRAY, V.INT32),
        ("tokenizer.ggml.merges", merges, V.ARRAY, V.STRING),
    ]
    # A byte-level vocabulary never produces an unknown token, but transformers' GGUF loader adds a new
    # "<|endoftext|>" as the unknown token when the file names none (one more token than the model's
    # embedding has rows): name the end-of-text token instead.
    unknown = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.eos_token_id
    for key, token_id in (("bos_token_id", tokenizer.bos_token_id), ("eos_token_id", tokenizer.eos_token_id),
                          ("unknown_token_id", unknown), ("padding_token_id", tokenizer.pad_token_id)):
        if token_id is not None:
            fields.append((f"tokenizer.ggml.{key}", int(token_id), V.UINT32, None))
    if tokenizer.chat_template:
        fields.append(("tokenizer.chat_template", tokenizer.chat_template, V.STRING, None))
    return fields


# --------------------------------------------------------------------------- writing


@dataclasses.dataclass
class PreparedGGUF:
    """A model encoded for GGUF (metadata fields and stored tensors), written by ``write``; kept so that
    a file can be written again with other forgetkit metadata without encoding it again."""

    arch: str
    fmt: str
    fields: list[tuple[str, Any, Any, Any]]
    tensors: list[tuple[str, np.ndarray, Any]]  # name, stored bytes or values, GGML type
    metadata_from: str

    def write(self, target: Path, metadata: str | None = None) -> ExportSummary:
        """Write to ``target`` (the caller makes the write atomic)."""
        from gguf import GGUFWriter

        writer = GGUFWriter(str(target), self.arch)
        for key, value, kind, sub in self.fields:
            writer.add_key_value(key, value, kind, sub_type=sub)
        writer.add_file_type(int(_file_type(self.fmt)))
        writer.add_quantization_version(2)
        if metadata is not None:
            writer.add_string(METADATA_KEY, metadata)
        types: dict[str, int] = {}
        for name, data, qtype in self.tensors:
            writer.add_tensor(name, data, raw_dtype=qtype)
            types[qtype.name] = types.get(qtype.name, 0) + 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return ExportSummary(str(target), self.fmt, self.arch, len(self.tensors), types, target.stat().st_size,
                             self.metadata_from)


def prepare_gguf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: str,
    *,
    source_gguf: Path | None = None,
    name: str | None = None,
) -> PreparedGGUF:
    """Encode ``model`` (and its tokenizer) for a GGUF file of format ``fmt``."""
    from gguf import GGUFValueType as V

    if fmt not in FORMATS:
        raise ForgetkitError(f"--gguf must be one of {', '.join(FORMATS)}, not '{fmt}'")
    arch = gguf_architecture(model)
    if source_gguf is not None:
        fields, origin = _source_fields(source_gguf), "source-gguf"
    else:
        fields, origin = _config_fields(model, arch) + _tokenizer_fields(tokenizer), "config"
        fields.append(("general.name", name or str(getattr(model.config, "_name_or_path", "") or arch), V.STRING, None))
    tensors = []
    for tensor_name, data in gguf_tensors(model, arch):
        qtype = storage_type(tensor_name, data, fmt)
        tensors.append((tensor_name, encode_tensor(data, qtype), qtype))
    return PreparedGGUF(arch, fmt, fields, tensors, origin)


def write_gguf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path, fmt: str, *,
               source_gguf: Path | None = None, metadata: str | None = None) -> ExportSummary:
    return prepare_gguf(model, tokenizer, fmt, source_gguf=source_gguf).write(target, metadata)


def read_gguf_metadata(path: Path) -> dict | None:
    """forgetkit's metadata stored in a GGUF file written here, or None."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    field = reader.fields.get(METADATA_KEY)
    return json.loads(field.contents()) if field is not None else None


def load_gguf_model(path: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A GGUF file through transformers' GGUF loader, as a check of what llama.cpp users receive."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    model.hf_quantizer = None
    model.eval()
    return model
