"""``forgetkit models``: the packaged pretrained models a MODEL argument can name, whether each is
installed, and the GGUF conversions in the cache."""

from __future__ import annotations

import json

from forgetkit.console import output
from forgetkit.errors import ForgetkitError
from forgetkit.gguf.convert import cached_conversions, conversions_root
from forgetkit.gguf.sources import SHORTCUTS, package_folder, shortcut_file
from forgetkit.stages.common import table


def shortcut_rows(conversions: list[dict]) -> list[dict]:
    by_shortcut = {c["shortcut"]: c for c in conversions if c.get("shortcut")}
    rows = []
    for shortcut in SHORTCUTS.values():
        installed = package_folder(shortcut) is not None
        gguf = None
        if installed:
            try:
                gguf = str(shortcut_file(shortcut))
            except ForgetkitError:
                gguf = None
        cached = by_shortcut.get(shortcut.name)
        rows.append({
            "name": shortcut.name, "model": shortcut.describes, "licence": shortcut.licence, "installed": installed,
            "gguf": gguf, "install": shortcut.install, "converted": cached["folder"] if cached else None,
        })
    return rows


def list_models(as_json: bool = False) -> None:
    conversions = cached_conversions()
    shortcuts = shortcut_rows(conversions)
    if as_json:
        output.print_json(json.dumps({"shortcuts": shortcuts, "conversions": conversions, "cache": str(conversions_root())}))
        return
    output.print(table("Packaged models (MODEL shortcuts)", ["name", "installed", "converted"], [
        (r["name"], "yes" if r["installed"] else f"no: {r['install']}", "yes" if r["converted"] else "not yet")
        for r in shortcuts
    ]))
    output.print(table(f"Cached GGUF conversions ({conversions_root()})", ["fingerprint", "file", "architecture", "MiB", "seconds"], [
        (c["sha256"][:16], c["file"], c["architecture"], round(c["folder_bytes"] / 2**20, 1), c.get("seconds"))
        for c in conversions
    ]))
