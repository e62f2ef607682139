"""Where forgetkit keeps things on the user's machine: the model cache and the artifact registry."""

from __future__ import annotations

import os
from pathlib import Path

REGISTRY_ENV = "FORGETKIT_REGISTRY"
REGISTRY_OFF = "off"  # FORGETKIT_REGISTRY=off records nothing


def cache_root(cache: Path | None = None) -> Path:
    """``--cache``, else ``$FORGETKIT_CACHE``, else ``$XDG_CACHE_HOME/forgetkit`` (``~/.cache/forgetkit``)."""
    if cache is not None:
        return Path(cache)
    base = os.environ.get("FORGETKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "forgetkit"
    )
    return Path(base)


def default_registry() -> Path | None:
    """``$FORGETKIT_REGISTRY`` (``off`` for none), else ``registry.sqlite`` in the cache."""
    value = os.environ.get(REGISTRY_ENV)
    if value:
        return None if value.lower() == REGISTRY_OFF else Path(value).expanduser()
    return cache_root() / "registry.sqlite"
