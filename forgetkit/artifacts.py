"""Artifacts: what every stage writes, with the metadata that lets the next stage trust it.

Two shapes:
- a single safetensors file (the Fisher), with our metadata as JSON under the header key ``forgetkit``;
- a folder (init adapters, trained adapters, merged models), with our metadata in ``forgetkit.json``.

Writes are atomic: everything goes to a hidden temporary sibling first and is renamed into place
only when complete, so an interrupted run never leaves something that looks finished.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from forgetkit import __version__
from forgetkit.errors import ForgetkitError

SCHEMA_VERSION = 1
METADATA_FILE = "forgetkit.json"
METADATA_KEY = "forgetkit"

STAGES = ("fisher", "init", "unlearn", "merge", "audit")


@dataclasses.dataclass
class BaseModelInfo:
    """Which base model an artifact belongs to: its id and a hash of its config and weight files."""

    model_id: str
    fingerprint: str


@dataclasses.dataclass
class Metadata:
    stage: str
    base_model: BaseModelInfo
    inputs: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    forgetkit_version: str = __version__
    created_at: str = dataclasses.field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str, source: str) -> "Metadata":
        try:
            raw = json.loads(text)
            raw["base_model"] = BaseModelInfo(**raw["base_model"])
            return cls(**raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise ForgetkitError(f"{source}: unreadable forgetkit metadata ({exc})") from None


# --------------------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def input_record(path: str | os.PathLike | None) -> dict[str, str]:
    """How an input appears in metadata: its path and the sha256 of its bytes (or of every file in a folder)."""
    if path is None:
        return {}
    path = Path(path)
    if path.is_dir():
        return {"path": str(path), "sha256": folder_sha256(path)}
    if path.is_file():
        return {"path": str(path), "sha256": sha256_file(path)}
    # A datasets id such as hf:locuslab/TOFU:forget10 has no local file to hash.
    return {"path": str(path), "sha256": ""}


def folder_sha256(folder: Path, patterns: tuple[str, ...] = ("*",)) -> str:
    digest = hashlib.sha256()
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    for file in files:
        digest.update(file.name.encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


MODEL_FILE_PATTERNS = ("config.json", "*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """sha256 over the model's config and weight files (names and contents), shortened to 16 hex digits.

    Tokenizer files are left out on purpose: they do not change what the weights compute. A folder
    that forgetkit converted from a GGUF file takes that file's fingerprint, so the file, its
    shortcut and the folder are one base model.
    """
    from forgetkit.gguf.convert import gguf_fingerprint, gguf_source

    source = gguf_source(Path(model_dir))
    if source is not None:
        return gguf_fingerprint(source["sha256"])
    return folder_sha256(Path(model_dir), MODEL_FILE_PATTERNS)[:16]


# --------------------------------------------------------------------------- atomic writes


def _temporary_sibling(target: Path, suffix: str = "") -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".partial{suffix}", dir=target.parent)
    os.close(handle)
    return Path(name)


def _replace(source: Path, target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        # A folder cannot be replaced by rename in one step: move the old one aside first.
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


@contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``target``, on failure it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
        _replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces ``target``, on failure it is removed."""
    target = Path(target)
    staging = _temporary_sibling(target, target.suffix)
    try:
        yield staging
        _replace(staging, target)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def write_json(target: str | os.PathLike, payload: Any) -> None:
    with atomic_file(target) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


# --------------------------------------------------------------------------- reading and writing


def save_tensor_artifact(target: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: Metadata) -> None:
    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    with atomic_file(target) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: metadata.to_json(), "format": "pt"})


def load_tensor_artifact(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device=str(device)) as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def write_folder_metadata(folder: str | os.PathLike, metadata: Metadata) -> None:
    Path(folder, METADATA_FILE).write_text(metadata.to_json() + "\n")


def read_metadata(path: str | os.PathLike) -> Metadata:
    """Read our metadata from a safetensors file or an artifact folder, with a clear error if absent."""
    path = Path(path)
    if not path.exists():
        raise ForgetkitError(f"{path}: no such file or folder")
    if path.is_dir():
        meta_file = path / METADATA_FILE
        if not meta_file.is_file():
            raise ForgetkitError(f"{path}: not a forgetkit artifact (no {METADATA_FILE})")
        return Metadata.from_json(meta_file.read_text(), str(meta_file))
    if path.suffix.lower() == ".gguf":
        from forgetkit.gguf.export import read_gguf_metadata

        try:
            raw = read_gguf_metadata(path)
        except Exception:  # gguf's reader raises several types on foreign or cut files
            raise ForgetkitError(f"{path}: not a readable GGUF file") from None
        if raw is None:
            raise ForgetkitError(f"{path}: GGUF file without forgetkit metadata")
        return Metadata.from_json(json.dumps(raw), str(path))
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception:  # safetensors raises its own error types for non-safetensors bytes
        raise ForgetkitError(f"{path}: not a safetensors file") from None
    if METADATA_KEY not in header:
        raise ForgetkitError(f"{path}: safetensors file without forgetkit metadata")
    return Metadata.from_json(header[METADATA_KEY], str(path))


def check_artifact(path: str | os.PathLike, expected_stage: str | tuple[str, ...], base: BaseModelInfo) -> Metadata:
    """Load an artifact's metadata and refuse it if it is of the wrong stage or for another base model."""
    meta = read_metadata(path)
    stages = (expected_stage,) if isinstance(expected_stage, str) else expected_stage
    if meta.schema_version > SCHEMA_VERSION:
        raise ForgetkitError(
            f"{path}: written by a newer forgetkit (schema {meta.schema_version} > {SCHEMA_VERSION}); upgrade forgetkit"
        )
    if meta.stage not in stages:
        raise ForgetkitError(f"{path}: is a '{meta.stage}' artifact, but a {' or '.join(stages)!s} artifact is needed here")
    if meta.base_model.fingerprint != base.fingerprint:
        raise ForgetkitError(
            f"{path}: made for base model {meta.base_model.model_id} (fingerprint {meta.base_model.fingerprint}), "
            f"not {base.model_id} (fingerprint {base.fingerprint})"
        )
    return meta
