"""A stand-in for the Hugging Face Hub on 127.0.0.1, answering the endpoints huggingface_hub calls
to create a repository and a branch, commit files and download them again.

Files are committed as "regular" (inline, base64) uploads, which the real Hub also accepts; the
server keeps every commit's files per branch, and every request's method, path and Authorization
header, so tests can check what was sent and with which token.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse


@dataclasses.dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = dataclasses.field(default_factory=lambda: {"main": {}})
    heads: dict[str, str] = dataclasses.field(default_factory=lambda: {"main": "0" * 40})
    commits: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str]] = []  # method, path, Authorization header
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                hub._handle(self, "GET")

            def do_HEAD(self):
                hub._handle(self, "HEAD")

            def do_POST(self):
                hub._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ plumbing

    def _reply(self, handler, status: int, payload: Any = None, body: bytes | None = None,
               headers: dict[str, str] | None = None, method: str = "GET") -> None:
        data = body if body is not None else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream" if body is not None else "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(data)

    def _handle(self, handler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        path = urlparse(handler.path).path
        with self.lock:
            self.requests.append((method, path, handler.headers.get("Authorization", "")))
            self.bodies.append(body)
            try:
                self._route(handler, method, path, body)
            except KeyError as missing:
                self._reply(handler, 404, {"error": f"not found: {missing}"}, method=method)

    def _route(self, handler, method: str, path: str, body: bytes) -> None:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if method == "POST" and path == "/api/repos/create":
            request = json.loads(body)
            repo_id = f"{request['organization']}/{request['name']}"
            if repo_id in self.repos:
                return self._reply(handler, 409, {"error": "You already created this model repo"})
            self.repos[repo_id] = Repo(private=request.get("visibility") == "private" or bool(request.get("private")))
            return self._reply(handler, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id})
        if method == "POST" and path == "/api/validate-yaml":
            return self._reply(handler, 200, {"errors": [], "warnings": []})
        if parts[:2] == ["api", "models"] and len(parts) >= 5:
            repo_id, action, rest = f"{parts[2]}/{parts[3]}", parts[4], parts[5:]
            repo = self.repos[repo_id]
            revision = rest[0] if rest else "main"
            if method == "POST" and action == "preupload":
                files = json.loads(body)["files"]
                return self._reply(handler, 200, {"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]})
            if method == "POST" and action == "branch":
                start = (json.loads(body) if body else {}).get("startingPoint") or "main"
                if revision in repo.branches:
                    return self._reply(handler, 409, {"error": "branch exists"})
                repo.branches[revision] = dict(repo.branches[start])
                repo.heads[revision] = repo.heads[start]
                return self._reply(handler, 200, {})
            if method == "POST" and action == "commit":
                return self._commit(handler, repo_id, repo, revision, body)
            if method == "GET" and action == "revision":
                files = repo.branches[self._branch(repo, revision)]
                return self._reply(handler, 200, {"id": repo_id, "modelId": repo_id, "sha": repo.heads[self._branch(repo, revision)],
                                                  "private": repo.private, "siblings": [{"rfilename": p} for p in files]})
            if method == "GET" and action == "tree":
                files = repo.branches[self._branch(repo, revision)]
                return self._reply(handler, 200, [{"type": "file", "path": p, "size": len(data), "oid": _blob_id(data)}
                                                  for p, data in sorted(files.items())])
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision, file = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
            repo = self.repos[repo_id]
            branch = self._branch(repo, revision)
            data = repo.branches[branch][file]
            return self._reply(handler, 200, body=data, method=method, headers={
                "X-Repo-Commit": repo.heads[branch], "ETag": f'"{_blob_id(data)}"'})
        self._reply(handler, 404, {"error": f"no route for {method} {path}"}, method=method)

    def _branch(self, repo: Repo, revision: str) -> str:
        if revision in repo.branches:
            return revision
        for name, head in repo.heads.items():
            if head == revision:
                return name
        raise KeyError(revision)

    def _commit(self, handler, repo_id: str, repo: Repo, branch: str, body: bytes) -> None:
        items = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(i["value"] for i in items if i["key"] == "header")
        files = dict(repo.branches[branch])
        for item in items:
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        oid = hashlib.sha1(body).hexdigest()
        repo.branches[branch], repo.heads[branch] = files, oid
        repo.commits.append({"branch": branch, "oid": oid, "summary": header.get("summary"),
                             "files": sorted(i["value"]["path"] for i in items if i["key"] == "file")})
        self._reply(handler, 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                                   "pullRequestUrl": None})


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
