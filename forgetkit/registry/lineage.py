"""Lineage: from an entry back through the artifacts it was made from to the data and base model,
and forward to the audits of it and its pushes to the Hub.

Parents are found by content: an input recorded as ``{path, sha256}`` is the entry whose
``content_sha256`` matches, wherever it lives now. Inputs no entry matches are data files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.tree import Tree

from forgetkit.registry.store import Entry, RegistryStore

MAX_DEPTH = 16  # guards against a cycle a hand-edited registry could contain


def audits_of(store: RegistryStore, entry: Entry) -> list[Entry]:
    return [e for e in store.entries() if e.stage == "audit" and e.inputs.get("adapter", {}).get("sha256") == entry.content_sha256]


def lineage(store: RegistryStore, entry: Entry, depth: int = 0) -> dict[str, Any]:
    """The entry as a nested dict: its inputs (entries or data files), audits and pushes."""
    node: dict[str, Any] = {
        "id": entry.id, "stage": entry.stage, "path": entry.path, "created_at": entry.created_at,
        "base_model": {"model_id": entry.base_model, "fingerprint": entry.base_fingerprint},
        "parameters": entry.parameters, "summary": entry.summary, "hub": entry.hub,
        "replaced_by": entry.replaced_by, "inputs": [],
    }
    for role, record in sorted(entry.inputs.items()):
        sha = (record or {}).get("sha256", "")
        matches = store.by_content(sha) if depth < MAX_DEPTH else []
        if matches:
            node["inputs"].append({"role": role, **lineage(store, matches[0], depth + 1)})
        else:
            node["inputs"].append({"role": role, "data": Path(record.get("path", "")).name, "sha256": sha})
    if entry.stage != "audit":
        node["audits"] = [{"id": a.id, "path": a.path, "summary": a.summary, "hub": a.hub} for a in audits_of(store, entry)]
    return node


def _label(node: dict[str, Any], role: str | None = None) -> str:
    prefix = f"[dim]{role}:[/] " if role else ""
    if "data" in node:
        return f"{prefix}data [bold]{node['data']}[/] (sha256 {node['sha256'][:12] or 'unknown'})"
    text = f"{prefix}[bold]{node['stage']}[/] [cyan]{node['id']}[/] {node['path']}"
    summary = node.get("summary") or {}
    if summary.get("verdict"):
        text += f" — verdict [bold]{summary['verdict']}[/]"
    if node.get("replaced_by"):
        text += f" [yellow](replaced by {node['replaced_by']})[/]"
    return text


def render(node: dict[str, Any], tree: Tree | None = None, role: str | None = None) -> Tree:
    """A rich tree: the entry on top, its pushes and audits, then its inputs down to the data."""
    branch = Tree(_label(node, role)) if tree is None else tree.add(_label(node, role))
    if "data" in node:
        return branch
    for push in node.get("hub", []):
        branch.add(f"[green]pushed[/] {push.get('repo_id')}@{push.get('revision', 'main')} "
                   f"(commit {str(push.get('commit', ''))[:12]}) {push.get('url', '')}")
    for audit in node.get("audits", []):
        verdict = (audit.get("summary") or {}).get("verdict") or "no verdict"
        branch.add(f"[magenta]audited by[/] [cyan]{audit['id']}[/] {audit['path']} — verdict [bold]{verdict}[/]")
    if tree is None:  # one base model for the whole chain: stages refuse artifacts made for another
        base = node["base_model"]
        branch.add(f"[dim]base model[/] {base['model_id']} (fingerprint {base['fingerprint']})")
    for child in node["inputs"]:
        render(child, branch, child["role"])
    return branch
