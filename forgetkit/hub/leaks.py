"""Finding forget-set text in files about to be published.

Every string value of every forget record (questions, answers, texts, paraphrases, secrets...) is
looked for in each file, as written (UTF-8) and as JSON and HTML would escape it. Values shorter than
``MIN_CHARS`` are skipped, since short phrases occur in any text by chance, except secret fields,
which are checked from ``MIN_SECRET_CHARS`` up. In safetensors files only the header (names, shapes
and string metadata) is searched: the rest is tensor numbers.

Findings name the file and the record (file:line) and field, never the text itself, so the error
message does not leak what it reports.
"""

from __future__ import annotations

import dataclasses
import html
import json
import struct
from pathlib import Path
from typing import Any, Iterable

from forgetkit.data import Record

MIN_CHARS = 12
MIN_SECRET_CHARS = 4
SECRET_FIELDS = ("secret",)


@dataclasses.dataclass(frozen=True)
class Needle:
    source: str  # the record's file:line
    field: str
    forms: tuple[bytes, ...]


@dataclasses.dataclass(frozen=True)
class Finding:
    file: str
    source: str
    field: str


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def needles(records: Iterable[Record]) -> list[Needle]:
    found: dict[bytes, Needle] = {}
    for record in records:
        for field, value in record.fields.items():
            shortest = MIN_SECRET_CHARS if field in SECRET_FIELDS else MIN_CHARS
            for text in _strings(value):
                text = text.strip()
                if len(text) < shortest:
                    continue
                forms = {text.encode(), json.dumps(text)[1:-1].encode(), html.escape(text).encode(),
                         html.escape(text, quote=False).encode()}
                key = text.encode()
                if key not in found:
                    found[key] = Needle(record.source, field, tuple(sorted(forms)))
    return list(found.values())


def searchable_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".safetensors" and len(data) >= 8:
        (header_length,) = struct.unpack("<Q", data[:8])
        return data[8:8 + header_length]
    return data


def scan(folder: Path, targets: list[Needle]) -> list[Finding]:
    """Every (file, record, field) of ``targets`` found in the files under ``folder``."""
    findings = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = searchable_bytes(path)
        for needle in targets:
            if any(form in data for form in needle.forms):
                findings.append(Finding(str(path.relative_to(folder)), needle.source, needle.field))
    return findings
