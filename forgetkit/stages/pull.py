"""``forgetkit pull``: fetch a pushed adapter through the Hugging Face cache and record it."""

from __future__ import annotations

from pathlib import Path

from forgetkit import registry
from forgetkit.artifacts import METADATA_FILE
from forgetkit.console import console
from forgetkit.errors import ForgetkitError
from forgetkit.hub.resolve import pull, split_hub_id


def run_pull(reference: str, revision: str | None = None) -> Path:
    parts = split_hub_id(reference)
    if parts is None:
        raise ForgetkitError(f"'{reference}': expected OWNER/NAME or OWNER/NAME@REVISION")
    repo_id, pinned = parts
    revision = revision or pinned
    folder = pull(repo_id, revision)
    if not (folder / METADATA_FILE).is_file():
        console.print(f"[yellow]note[/]: {repo_id} has no {METADATA_FILE}; not a forgetkit adapter, not recorded")
        return folder
    store = registry.open_store(required=False)
    if store is not None:
        entry = store.add(registry.describe(folder))
        # The snapshot folder is named by its commit in the cache.
        store.add_push(entry.id, {"repo_id": repo_id, "revision": revision or "main", "commit": folder.name,
                                  "url": f"pulled from {repo_id}"})
    return folder
