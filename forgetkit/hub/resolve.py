"""Adapters named by Hub id: ``OWNER/NAME`` or ``OWNER/NAME@REVISION`` wherever a stage takes an
adapter folder. They are fetched with ``snapshot_download``, so they land in (and are reused from)
the standard Hugging Face cache, with the token from the usual places (HF_TOKEN, the cached login)."""

from __future__ import annotations

import re
from pathlib import Path

from forgetkit.errors import ForgetkitError

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")


def split_hub_id(reference: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` if ``reference`` reads as a Hub id, else None."""
    match = HUB_ID.match(reference)
    return (match["repo"], match["revision"]) if match else None


def pull(repo_id: str, revision: str | None = None) -> Path:
    """Download (or reuse from the cache) a model repository; returns the snapshot folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, repo_type="model"))
    except LocalEntryNotFoundError:
        raise ForgetkitError(f"{repo_id}: not in the Hugging Face cache and the Hub cannot be reached") from None
    except HfHubHTTPError as exc:
        raise ForgetkitError(f"{repo_id}: {hub_error(exc)}") from None


def local_artifact(reference: str | None) -> str | None:
    """A local path as given; a Hub id pulled into the cache; anything else refused clearly."""
    if reference is None or Path(reference).exists():
        return reference
    parts = split_hub_id(reference)
    if parts is None or reference.startswith((".", "/", "~")):
        raise ForgetkitError(f"{reference}: no such file or folder")
    try:
        return str(pull(*parts))
    except ForgetkitError as exc:
        raise ForgetkitError(f"{reference}: no such file or folder here, nor on the Hub ({exc})") from None


def hub_error(exc: Exception) -> str:
    """First line of a huggingface_hub error, which names the status and URL but never the token."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{first}" if status is None or str(status) in first else f"HTTP {status}: {first}"
