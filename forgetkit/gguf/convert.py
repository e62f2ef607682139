"""A GGUF file dequantised once into a transformers folder in the cache, so later stages load it in
seconds instead of dequantising again (about 40 s for SmolLM2-135M on 2 cores).

The folder is keyed by the GGUF file's sha256 and carries ``forgetkit-gguf.json``, which names the
file it came from: the base-model fingerprint of the folder is the GGUF file's, so an adapter made on
the ``.gguf`` path, on its shortcut or on the converted folder is recognised as made for one base.
A conversion is staged in a hidden sibling and renamed into place when complete, under a file lock
(several processes of one launch convert once); a folder left by a killed conversion is removed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from forgetkit.artifacts import sha256_file
from forgetkit.cache import cached_folder
from forgetkit.console import console
from forgetkit.errors import ForgetkitError
from forgetkit.gguf.sources import SHORTCUTS, check_gguf, gguf_file_of
from forgetkit.locations import cache_root

SOURCE_FILE = "forgetkit-gguf.json"
FINGERPRINT_LENGTH = 16


def conversions_root() -> Path:
    return cache_root() / "gguf"


def gguf_source(model_dir: Path) -> dict | None:
    """The record of the GGUF file a converted folder came from, or None for any other folder."""
    marker = Path(model_dir) / SOURCE_FILE
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except ValueError:
        raise ForgetkitError(f"{marker}: unreadable; delete {model_dir} and it will be converted again") from None


def gguf_fingerprint(sha256: str) -> str:
    return sha256[:FINGERPRINT_LENGTH]


def converted_folder(model_ref: str) -> tuple[Path, str]:
    """The cached transformers folder for a ``.gguf`` path or shortcut (converting it the first time)
    and the GGUF file's sha256."""
    path = gguf_file_of(model_ref)
    digest = sha256_file(path)
    folder = conversions_root() / gguf_fingerprint(digest)
    shortcut = model_ref if model_ref in SHORTCUTS else None
    # A folder without the marker (not one of ours, or an older layout) is replaced when the new one lands.
    cached_folder(folder, lambda f: _finished(f, digest), lambda staging: _convert(path, digest, staging, shortcut))
    return folder, digest


def _finished(folder: Path, digest: str) -> bool:
    try:
        source = gguf_source(folder) if folder.is_dir() else None
    except ForgetkitError:  # an unreadable marker: convert again
        return False
    return bool(source) and source.get("sha256") == digest and (folder / "config.json").is_file()


def _convert(path: Path, digest: str, staging: Path, shortcut: str | None) -> None:
    """Dequantise ``path`` into ``staging`` (renamed into the cache by ``cached_folder`` when complete)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    architecture = check_gguf(path)
    console.print(f"converting {path.name} ({path.stat().st_size / 2**20:.0f} MiB GGUF) to a cached transformers "
                  f"folder, once")
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, NotImplementedError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ForgetkitError(f"{path}: transformers could not load this GGUF file ({first})") from None
    # The loader marks the model as GGUF-quantised, and save_pretrained refuses such a model; the
    # weights are already dequantised to float32, so the marks are dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    _drop_phantom_tokens(staging, model.get_input_embeddings().weight.shape[0])
    # Written last: its presence is what marks the folder finished.
    (staging / SOURCE_FILE).write_text(json.dumps({
        "sha256": digest,
        "file": path.name,
        "path": str(path.resolve()),
        "bytes": path.stat().st_size,
        "shortcut": shortcut,
        "architecture": architecture,
        "transformers_version": transformers.__version__,
        "seconds": round(time.perf_counter() - started, 1),
    }, indent=2) + "\n")
    console.print(f"converted in {time.perf_counter() - started:.0f}s")


def source_gguf_file(model_dir: Path) -> Path | None:
    """The GGUF file a converted folder came from, while it is still where it was and unchanged."""
    source = gguf_source(model_dir)
    if not source or not source.get("path"):
        return None
    path = Path(source["path"])
    if path.is_file() and path.stat().st_size == source.get("bytes") and sha256_file(path) == source["sha256"]:
        return path
    return None


def _drop_phantom_tokens(folder: Path, rows: int) -> None:
    """Remove tokens the GGUF tokenizer loader invented past the model's vocabulary.

    transformers builds a byte-level GGUF vocabulary with GPT2Tokenizer, whose defaults add
    "<|endoftext|>" when the file has no such token (Llama 3's files, ours from a tiny model): one
    token more than the embedding has rows, which no text should ever encode to.
    """
    tokenizer_file = folder / "tokenizer.json"
    spec = json.loads(tokenizer_file.read_text())
    phantom = [t for t in spec.get("added_tokens", []) if t["id"] >= rows]
    if not phantom:
        return
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < rows]
    tokenizer_file.write_text(json.dumps(spec, ensure_ascii=False))
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    names = {t["content"] for t in phantom}
    decoder = config.get("added_tokens_decoder", {})
    config["added_tokens_decoder"] = {k: v for k, v in decoder.items() if int(k) < rows}
    for key in ("unk_token", "bos_token", "eos_token", "pad_token"):
        if config.get(key) in names:
            config[key] = None
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False))


def cached_conversions() -> list[dict]:
    """Every finished conversion in the cache, with its folder and size."""
    root = conversions_root()
    rows = []
    for folder in sorted(root.glob("*")) if root.is_dir() else []:
        source = gguf_source(folder) if folder.is_dir() else None
        if source:
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            rows.append({**source, "folder": str(folder), "folder_bytes": size})
    return rows
