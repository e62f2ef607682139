"""The local registry of artifacts: every file or folder a stage writes, with its lineage.

Stages call :func:`ensure_ready` before their work (so a broken registry fails fast, not after an
hour of training) and :func:`record` after writing. The registry file is ``--registry PATH``,
else ``$FORGETKIT_REGISTRY`` (``off`` records nothing), else ``registry.sqlite`` in the cache.
"""

from __future__ import annotations

from pathlib import Path

from forgetkit.errors import ForgetkitError
from forgetkit.locations import default_registry
from forgetkit.registry.entries import changes, describe
from forgetkit.registry.store import Entry, RegistryStore

__all__ = ["Entry", "RegistryStore", "changes", "describe", "ensure_ready", "open_store", "record", "use_registry"]

_chosen: Path | None = None
_ready: set[Path] = set()


def use_registry(path: Path | None) -> None:
    """Make ``path`` this process's registry (the CLI's ``--registry``); None goes back to the default."""
    global _chosen
    _chosen = Path(path).expanduser() if path is not None else None


def registry_path() -> Path | None:
    return _chosen if _chosen is not None else default_registry()


def open_store(required: bool = True) -> RegistryStore | None:
    path = registry_path()
    if path is None:
        if required:
            raise ForgetkitError("the registry is off (FORGETKIT_REGISTRY=off); give --registry PATH")
        return None
    return RegistryStore(path)


def ensure_ready() -> None:
    """Create or check the registry once per process; raises ForgetkitError if it cannot be written."""
    store = open_store(required=False)
    if store is None or store.path in _ready:
        return
    store.check()
    _ready.add(store.path)


def record(path: str | Path) -> Entry | None:
    """Record an artifact just written; None when the registry is off."""
    store = open_store(required=False)
    if store is None:
        return None
    try:
        return store.add(describe(path))
    except ForgetkitError as exc:
        raise ForgetkitError(f"wrote {path}, but could not record it: {exc} (then run: forgetkit registry add {path})") from None
