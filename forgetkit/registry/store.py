"""The registry file: one SQLite database (standard library) shared by every forgetkit process.

Safe under concurrent writers: every write is one ``BEGIN IMMEDIATE`` transaction, which takes
SQLite's write lock up front, and connections wait up to ``BUSY_TIMEOUT_S`` for it instead of
failing. A file that is not a forgetkit registry, is corrupt, or was written by a newer schema is
refused with a one-line message; it is never reset or overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator

from forgetkit.errors import ForgetkitError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS artifacts (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    stage TEXT NOT NULL,
    base_model TEXT NOT NULL,
    base_fingerprint TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    files TEXT NOT NULL,
    inputs TEXT NOT NULL,
    parameters TEXT NOT NULL,
    summary TEXT NOT NULL,
    hub TEXT NOT NULL,
    created_at TEXT NOT NULL,
    registered_at TEXT NOT NULL,
    replaced_by TEXT
);
CREATE INDEX IF NOT EXISTS artifacts_by_content ON artifacts (content_sha256);
CREATE INDEX IF NOT EXISTS artifacts_by_path ON artifacts (path);
"""

_JSON_COLUMNS = ("files", "inputs", "parameters", "summary", "hub")


@dataclasses.dataclass
class Entry:
    """One recorded artifact.

    ``files`` maps each file's path relative to the artifact (``.`` for a single file) to its sha256;
    ``content_sha256`` is the hash other artifacts record when they name this one as an input, so
    lineage is found by content, whatever the path it was read from. ``summary`` holds an audit
    report's verdict and headline numbers; ``hub`` every push of the artifact.
    """

    id: str
    path: str
    stage: str
    base_model: str
    base_fingerprint: str
    content_sha256: str
    files: dict[str, str]
    inputs: dict[str, dict[str, str]]
    parameters: dict[str, Any]
    summary: dict[str, Any]
    hub: list[dict[str, Any]]
    created_at: str
    registered_at: str
    replaced_by: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Entry":
        values = dict(row)
        for column in _JSON_COLUMNS:
            values[column] = json.loads(values[column])
        return cls(**values)

    def to_row(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        for column in _JSON_COLUMNS:
            values[column] = json.dumps(values[column], sort_keys=True, default=str)
        return values


class RegistryStore:
    """Reads and writes entries of one registry file."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # ------------------------------------------------------------------ connection

    @contextmanager
    def _connect(self, write: bool) -> Iterator[sqlite3.Connection]:
        if not write and not self.path.exists():
            raise ForgetkitError(f"{self.path}: no registry here yet (nothing has been recorded)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with closing(sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)) as connection:
                connection.row_factory = sqlite3.Row
                connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    self._check_schema(connection, create=write)
                    yield connection
                    connection.execute("COMMIT")
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
        except sqlite3.DatabaseError as exc:  # also OperationalError: locked past the timeout, unreadable file
            raise ForgetkitError(f"{self.path}: unusable forgetkit registry ({exc}); move it aside or choose "
                                 "another with --registry") from None

    def _check_schema(self, connection: sqlite3.Connection, create: bool) -> None:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables and create:
            # One statement at a time: executescript would commit the open transaction.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                connection.execute(statement)
            connection.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            return
        if not tables:
            return
        if "meta" not in tables or "artifacts" not in tables:
            raise ForgetkitError(f"{self.path}: an SQLite file, but not a forgetkit registry; choose another "
                                 "with --registry")
        row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row and str(row[0]).isdigit() else None
        if version is None:
            raise ForgetkitError(f"{self.path}: registry without a schema version; move it aside")
        if version > SCHEMA_VERSION:
            raise ForgetkitError(f"{self.path}: registry written by a newer forgetkit (schema {version} > "
                                 f"{SCHEMA_VERSION}); upgrade forgetkit")

    # ------------------------------------------------------------------ operations

    def check(self) -> None:
        """Create the registry if absent and make sure it is one we can write."""
        with self._connect(write=True):
            pass

    def add(self, entry: Entry) -> Entry:
        """Insert (or refresh) an entry; older entries at the same path are marked replaced by it."""
        with self._connect(write=True) as db:
            row = entry.to_row()
            old = db.execute("SELECT hub FROM artifacts WHERE id = ?", (entry.id,)).fetchone()
            if old is not None:  # the same bytes at the same path: keep what was recorded about pushes
                row["hub"] = json.dumps(_merge_pushes(json.loads(old["hub"]), entry.hub), sort_keys=True)
            db.execute(f"INSERT OR REPLACE INTO artifacts ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                       tuple(row.values()))
            db.execute("UPDATE artifacts SET replaced_by = ? WHERE path = ? AND id != ? AND replaced_by IS NULL",
                       (entry.id, entry.path, entry.id))
            return Entry.from_row(db.execute("SELECT * FROM artifacts WHERE id = ?", (entry.id,)).fetchone())

    def add_push(self, entry_id: str, push: dict[str, Any]) -> None:
        with self._connect(write=True) as db:
            row = db.execute("SELECT hub FROM artifacts WHERE id = ?", (entry_id,)).fetchone()
            if row is None:
                raise ForgetkitError(f"{self.path}: no entry {entry_id}")
            hub = _merge_pushes(json.loads(row["hub"]), [push])
            db.execute("UPDATE artifacts SET hub = ? WHERE id = ?", (json.dumps(hub, sort_keys=True), entry_id))

    def remove(self, entry_id: str) -> None:
        with self._connect(write=True) as db:
            db.execute("DELETE FROM artifacts WHERE id = ?", (entry_id,))
            db.execute("UPDATE artifacts SET replaced_by = NULL WHERE replaced_by = ?", (entry_id,))

    def entries(self) -> list[Entry]:
        if not self.path.exists():
            return []
        with self._connect(write=False) as db:
            rows = db.execute("SELECT * FROM artifacts ORDER BY rowid").fetchall()
        return [Entry.from_row(row) for row in rows]

    def get(self, prefix: str) -> Entry:
        """The entry whose id starts with ``prefix`` (at least 4 characters, like git's short hashes)."""
        if len(prefix) < 4:
            raise ForgetkitError(f"'{prefix}': give at least 4 characters of an entry id")
        with self._connect(write=False) as db:
            rows = db.execute("SELECT * FROM artifacts WHERE id LIKE ? ORDER BY id", (prefix.lower() + "%",)).fetchall()
        if not rows:
            raise ForgetkitError(f"{self.path}: no entry with id {prefix}")
        if len(rows) > 1:
            raise ForgetkitError(f"'{prefix}' is ambiguous: {', '.join(r['id'] for r in rows)}")
        return Entry.from_row(rows[0])

    def find(self, reference: str) -> Entry:
        """An entry by id prefix, or the current entry recorded for an artifact's path."""
        path = Path(reference).expanduser()
        if path.exists():
            current = [e for e in self.entries() if e.path == str(path.resolve()) and e.replaced_by is None]
            if not current:
                raise ForgetkitError(f"{reference}: not recorded in {self.path} (forgetkit registry add {reference})")
            return current[-1]
        return self.get(reference)

    def by_content(self, sha256: str) -> list[Entry]:
        if not sha256 or not self.path.exists():
            return []
        with self._connect(write=False) as db:
            rows = db.execute("SELECT * FROM artifacts WHERE content_sha256 = ? ORDER BY rowid DESC",
                              (sha256,)).fetchall()
        return [Entry.from_row(row) for row in rows]


def _merge_pushes(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen = {(p.get("repo_id"), p.get("revision"), p.get("commit")) for p in old}
    return old + [p for p in new if (p.get("repo_id"), p.get("revision"), p.get("commit")) not in seen]
