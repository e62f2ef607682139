"""Loading base models and finding the weights an adapter should target."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from forgetkit.artifacts import BaseModelInfo, model_fingerprint
from forgetkit.errors import ForgetkitError
from forgetkit.gguf.convert import converted_folder
from forgetkit.gguf.sources import is_gguf_reference

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Substrings of module paths that mark attention and MLP blocks across the architectures we test
# (Llama, Mistral, GPT-2, GPT-Neo, GPT-NeoX, Phi, Qwen, OPT, Falcon).
ATTENTION_MARKERS = ("attn", "attention")
MLP_MARKERS = ("mlp", "feed_forward", "ffn")


@dataclasses.dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: BaseModelInfo
    local_dir: Path

    @property
    def context_length(self) -> int | None:
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in DTYPES:
        raise ForgetkitError(f"unknown dtype '{name}'; choose one of {', '.join(DTYPES)}")
    if DTYPES[name] is not None:
        return DTYPES[name]
    # auto: bf16 where the hardware has it, full precision on CPU.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_model_dir(model_ref: str) -> Path:
    """A local folder as is; a ``.gguf`` file or packaged-model shortcut through its cached conversion;
    a Hub id through the Hub cache (downloading only what loading needs)."""
    if os.path.isdir(model_ref):
        return Path(model_ref)
    if is_gguf_reference(model_ref):
        return converted_folder(model_ref)[0]
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                model_ref,
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*"],
            )
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, ValueError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ForgetkitError(f"{model_ref}: not a local folder and could not be fetched from the Hub ({first_line})") from None


def describe_model(model_ref: str) -> tuple[Path, BaseModelInfo]:
    model_dir = resolve_model_dir(model_ref)
    if not (model_dir / "config.json").is_file():
        raise ForgetkitError(f"{model_ref}: no config.json, not a transformers model folder")
    return model_dir, BaseModelInfo(model_id=model_ref, fingerprint=model_fingerprint(model_dir))


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory so far: the CUDA allocator's on a GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def load_model(
    model_ref: str,
    *,
    dtype: str = "auto",
    device: torch.device | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    runs_on: torch.device | None = None,
) -> LoadedModel:
    """``runs_on``: the device the weights will compute on when they are loaded on another first (a
    sharded base is loaded on the host and split onto the GPUs): ``dtype="auto"`` is decided for it."""
    device = device or default_device()
    # Only passed when asked: the default lets transformers pick the fastest kernel it supports.
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model_dir, info = describe_model(model_ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=resolve_dtype(dtype, runs_on or device), trust_remote_code=trust_remote_code, **extra
        )
    except (OSError, ValueError) as exc:
        raise ForgetkitError(f"{model_ref}: could not be loaded ({str(exc).strip().splitlines()[0]})") from None
    embedding_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embedding_rows:
        raise ForgetkitError(
            f"{model_ref}: model and tokenizer do not match (the tokenizer has {len(tokenizer)} tokens, "
            f"the model's embedding {embedding_rows} rows)"
        )
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out everywhere, so any id works; eos is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, info=info, local_dir=model_dir)


# --------------------------------------------------------------------------- target modules


def is_adaptable(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def discover_targets(model: PreTrainedModel, spec: str = "all") -> list[str]:
    """Names of the modules a LoRA adapter should wrap.

    Every linear layer (GPT-2's Conv1D included) but the output head. ``spec`` narrows this:
    ``all``, ``attn``, ``mlp``, or a comma-separated list of names matched against the end of
    the module path (``q_proj,v_proj``).
    """
    head = model.get_output_embeddings()
    candidates = [name for name, module in model.named_modules() if is_adaptable(module) and module is not head]
    if spec == "all":
        chosen = candidates
    elif spec == "attn":
        chosen = [n for n in candidates if any(m in n for m in ATTENTION_MARKERS)]
    elif spec == "mlp":
        chosen = [n for n in candidates if any(m in n for m in MLP_MARKERS)]
    else:
        wanted = [w.strip() for w in spec.split(",") if w.strip()]
        chosen = [n for n in candidates if any(n == w or n.endswith("." + w) for w in wanted)]
        missing = [w for w in wanted if not any(n == w or n.endswith("." + w) for n in candidates)]
        if missing:
            raise ForgetkitError(f"--targets: no linear layer named {', '.join(missing)} in this model")
    if not chosen:
        raise ForgetkitError(f"--targets {spec}: matches no linear layer in this model")
    return chosen


def weight_as_out_in(module: nn.Module) -> torch.Tensor:
    """The module's weight as an (out_features, in_features) view; Conv1D stores it transposed."""
    return module.weight.T if isinstance(module, Conv1D) else module.weight


# --------------------------------------------------------------------------- memory


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute each transformer block's activations in the backward pass instead of keeping them.

    With LoRA (or any frozen base) the inputs of the first block must require grad: the embedding
    output of a frozen base does not, and a reentrant checkpoint whose inputs need no gradient gives
    its block's adapter weights no gradient at all, so nothing trains (a bug other unlearning tools
    shipped). The non-reentrant variant does not need it, and the input hook is set all the same.

    Blocks checkpoint only in training mode; stages that want the function of the eval-mode model
    (fisher: no dropout) call ``checkpoint_in_eval`` after ``model.eval()``. Returns the number of
    checkpointed blocks.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ForgetkitError(f"--gradient-checkpointing: {type(base).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2 name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.enable_input_require_grads()
    base.config.use_cache = False
    return sum(1 for m in base.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing)


def checkpoint_in_eval(model: nn.Module) -> None:
    """Let checkpointed blocks recompute while the rest of the model (dropout, attention dropout)
    stays in eval mode: the blocks' own flag is what transformers reads."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
            module.training = True
