"""``forgetkit registry``: list, show, verify, forget and add entries of the artifact registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rich.table import Table

from forgetkit import registry
from forgetkit.console import console, output
from forgetkit.registry.lineage import lineage, render
from forgetkit.stages.common import table


def _print_json(payload) -> None:
    print(json.dumps(payload, indent=2, sort_keys=True, default=str))


def list_entries(base: str | None = None, stage: str | None = None, include_replaced: bool = False,
                 as_json: bool = False) -> list[registry.Entry]:
    store = registry.open_store()
    entries = [
        e for e in store.entries()
        if (include_replaced or e.replaced_by is None)
        and (stage is None or e.stage == stage)
        and (base is None or base in e.base_model or e.base_fingerprint.startswith(base))
    ]
    if as_json:
        _print_json([e.__dict__ for e in entries])
        return entries
    rows = []
    # One pass over the registry for every entry's audits, not one per entry.
    audits_by_adapter: dict[str, list[registry.Entry]] = {}
    for e in store.entries():
        if e.stage == "audit" and e.inputs.get("adapter", {}).get("sha256"):
            audits_by_adapter.setdefault(e.inputs["adapter"]["sha256"], []).append(e)
    for e in entries:
        audits = audits_by_adapter.get(e.content_sha256, []) if e.stage != "audit" else [e]
        verdict = next((a.summary.get("verdict") for a in reversed(audits) if a.summary.get("verdict")), "")
        pushed = ", ".join(f"{p['repo_id']}@{p.get('revision', 'main')}" for p in e.hub)
        rows.append((e.id, e.stage, e.path, f"{Path(e.base_model).name} ({e.base_fingerprint[:8]})", e.created_at,
                     verdict, pushed, f"replaced by {e.replaced_by}" if e.replaced_by else "current"))
    listing = Table(title=f"Registry {store.path} ({len(rows)} entries)")
    for column in ("id", "stage", "path", "base (fingerprint)", "created", "audit verdict", "hub", "status"):
        listing.add_column(column)
    for row in rows:
        listing.add_row(*row)
    output.print(listing)
    return entries


def show_entry(entry_id: str, as_json: bool = False) -> dict:
    store = registry.open_store()
    tree = lineage(store, store.find(entry_id))
    if as_json:
        _print_json(tree)
    else:
        output.print(render(tree))
    return tree


def verify_entries(entry_id: str | None = None) -> bool:
    """True when every checked entry's files are as recorded."""
    store = registry.open_store()
    entries = [store.find(entry_id)] if entry_id else [e for e in store.entries() if e.replaced_by is None]
    rows, clean = [], True
    for entry in entries:
        found = registry.changes(entry)
        clean = clean and not found
        if not found:
            rows.append((entry.id, entry.path, len(entry.files), "[green]unchanged[/]", ""))
        for name, status in found.items():
            rows.append((entry.id, entry.path, len(entry.files), f"[red]{status}[/]", name))
    output.print(table("Registry verification", ["id", "path", "files", "status", "file"], rows))
    return clean


def forget_entry(entry_id: str, delete_files: bool = False) -> None:
    store = registry.open_store()
    entry = store.find(entry_id)
    store.remove(entry.id)
    console.print(f"dropped {entry.id} ({entry.stage}, {entry.path}) from {store.path}")
    if not delete_files:
        return
    path = Path(entry.path)
    targets = [path] if path.is_dir() or path.suffix != ".json" else [path.parent / name for name in entry.files]
    for target in targets:
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    if path.suffix == ".json":  # an audit report's plots folder, now empty
        shutil.rmtree(path.with_name(path.stem + ".plots"), ignore_errors=True)
    console.print(f"deleted the files of {entry.path}")


def add_entries(paths: list[Path]) -> list[registry.Entry]:
    store = registry.open_store()
    added = [store.add(registry.describe(path)) for path in paths]
    console.print(table("Recorded", ["id", "stage", "path"], [(e.id, e.stage, e.path) for e in added]))
    return added
