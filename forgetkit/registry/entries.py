"""Turning an artifact on disk into a registry entry: what it is, for which base, from which inputs,
and the sha256 of every file it is made of."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

from forgetkit.artifacts import input_record, read_metadata, sha256_file
from forgetkit.audit.reference import read_report
from forgetkit.errors import ForgetkitError
from forgetkit.registry.store import Entry

AUDITED_VARIANTS = ("unlearned", "model")  # the variant a report's verdict is about, in order of preference


def entry_id(content_sha256: str, path: Path) -> str:
    """Stable for the same bytes at the same place, so recording an artifact twice is idempotent."""
    return hashlib.sha256(f"{content_sha256}\0{path}".encode()).hexdigest()[:12]


def report_files(report: Path) -> list[Path]:
    """An audit report's JSON and the readable files written beside it."""
    files = [report] + [p for p in (report.with_suffix(".md"), report.with_suffix(".html")) if p.is_file()]
    plots = report.with_name(report.stem + ".plots")
    if plots.is_dir():
        files += sorted(p for p in plots.rglob("*") if p.is_file())
    return files


def artifact_files(path: Path) -> dict[str, str]:
    """sha256 of each file the artifact is made of, keyed by its path relative to the artifact."""
    if path.is_dir():
        return {str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}
    if path.suffix == ".json":
        return {str(p.relative_to(path.parent)): sha256_file(p) for p in report_files(path)}
    return {".": sha256_file(path)}


def audit_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The verdict and the numbers a reader looks at first, for the variant the verdict is about."""
    results = report.get("results", {})
    variant = next((v for v in AUDITED_VARIANTS if v in results), None)
    if variant is None:
        return {}
    value = results[variant]
    forget = value.get("sets", {}).get("forget", {}).get("summary", {})
    verdict = value.get("verdict") or {}
    tofu = value.get("tofu") or {}
    mia = value.get("mia", {}).get("forget", {})
    return {
        "variant": variant,
        "verdict": verdict.get("verdict"),
        "failed": verdict.get("failed", []),
        "forget_rouge_l": forget.get("rouge_l"),
        "forget_el10": forget.get("el10"),
        "forget_canary_exposure": forget.get("canary_exposure"),
        "mia_auc_min_k_pp": mia.get("min_k_pp", {}).get("auc"),
        "forget_quality": tofu.get("forget_quality"),
        "model_utility": (tofu.get("model_utility") or {}).get("value"),
        "attacks": list(value.get("attacks", {})),
    }


def _is_report(path: Path) -> bool:
    """An audit report (JSON) rather than a safetensors or GGUF artifact, told by the bytes, not the
    name: a stage's output may be called anything (``-o report`` writes a report without ``.json``)."""
    with path.open("rb") as handle:
        head = handle.read(9)
    if head[:4] == b"GGUF":
        return False
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: an 8-byte header length, then its JSON header
        return False
    return head.lstrip()[:1] == b"{"


def describe(path: str | Path) -> Entry:
    """Read an artifact's own metadata (or an audit report) and hash its files."""
    path = Path(path).resolve()
    if not path.exists():
        raise ForgetkitError(f"{path}: no such file or folder")
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if path.is_file() and _is_report(path):
        report = read_report(path)
        inputs = dict(report.get("inputs", {}))
        if report.get("adapter"):
            inputs["adapter"] = report["adapter"]
        base = report.get("base_model", {})
        stage, model_id, fingerprint = "audit", base.get("model_id", ""), base.get("fingerprint", "")
        parameters, summary, created = report.get("parameters", {}), audit_summary(report), report.get("created_at", now)
    else:
        meta = read_metadata(path)
        inputs, stage = meta.inputs, meta.stage
        model_id, fingerprint = meta.base_model.model_id, meta.base_model.fingerprint
        parameters, summary, created = meta.parameters, {}, meta.created_at
    content = input_record(path)["sha256"]
    return Entry(
        id=entry_id(content, path), path=str(path), stage=stage, base_model=model_id, base_fingerprint=fingerprint,
        content_sha256=content, files=artifact_files(path), inputs=inputs, parameters=parameters, summary=summary,
        hub=[], created_at=created, registered_at=now,
    )


def changes(entry: Entry) -> dict[str, str]:
    """Files of an entry that are no longer as recorded: ``changed``, ``missing`` or ``added``."""
    path = Path(entry.path)
    if not path.exists():
        return {name: "missing" for name in entry.files}
    current = artifact_files(path)
    found = {name: "changed" for name, sha in entry.files.items() if name in current and current[name] != sha}
    found.update({name: "missing" for name in entry.files if name not in current})
    found.update({name: "added" for name in current if name not in entry.files})
    return dict(sorted(found.items()))
