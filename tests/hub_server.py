"""A small Hugging Face Hub-protocol server on 127.0.0.1, for testing ``zoo.hub`` with the real client.

It speaks just enough of the Hub's HTTP API for ``huggingface_hub`` (checked against 2.4) to create a
repo and a branch, validate a card's YAML, pre-upload (every file "regular", so neither LFS nor Xet is
used), commit NDJSON, answer revision info and tree listings, and serve ``resolve`` with ``ETag``,
``X-Repo-Commit`` and ``Content-Length``. Any other route answers a logged 404, so that a client which
needs more fails a test instead of passing silently.

Example:
    >>> with HubServer() as hub:
    ...     HfApi(endpoint=hub.url).create_repo("org/name")
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

log = logging.getLogger("tests.hub_server")

TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
API = re.compile(
    r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(revision|preupload|commit|tree|branch)/([^/]+)(/.*)?)?$"
)
RESOLVE = re.compile(r"^(?:/(datasets|spaces))?/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def git_blob_id(data: bytes) -> str:
    """The git object id of a file, which the Hub sends as the ETag of a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    """One repository: branches pointing at commits, each commit a full snapshot of the files."""

    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def commit_of(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class HubServer:
    """The server, run in a daemon thread; ``requests`` records ``(method, path)`` of every request."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        self.authorized: list[bool] = []  # whether each request carried a token (the value is never kept)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of ``repo_id`` at ``revision``."""
        repo = self.repos[(repo_type, repo_id)]
        return repo.commits[repo.commit_of(revision)]

    def tamper(self, repo_id: str, path: str, data: bytes, revision: str = "main", repo_type: str = "model") -> None:
        """Replace a file's bytes in place, without a new commit (a corrupted or malicious mirror)."""
        self.files(repo_id, revision, repo_type)[path] = data

    def add_commit(self, repo_type: str, repo_id: str, branch: str, changes: dict[str, bytes | None],
                   message: str) -> str:
        """Commit ``changes`` (None deletes) on ``branch`` and return the new commit id."""
        with self._lock:
            repo = self.repos.setdefault((repo_type, repo_id), Repo())
            parent = repo.branches.get(branch)
            files = dict(repo.commits[parent]) if parent else {}
            for path, data in changes.items():
                if data is None:
                    files.pop(path, None)
                else:
                    files[path] = data
            digest = hashlib.sha1(f"{parent}:{message}:{len(repo.commits)}".encode())
            for path in sorted(files):
                digest.update(path.encode() + files[path])
            oid = digest.hexdigest()
            repo.commits[oid] = files
            repo.branches[branch] = oid
            return oid


def _handler(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

        # --------------------------------------------------------------- plumbing
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(payload).encode(), headers)

        def _error(self, status: int, code: str, message: str) -> None:
            self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _dispatch(self) -> None:
            path = urlsplit(self.path).path
            with server._lock:
                server.requests.append((self.command, path))
                server.authorized.append(self.headers.get("Authorization", "").startswith("Bearer "))
            handled = self._route(self.command, path)
            if not handled:
                log.warning("hub_server: unknown route %s %s", self.command, self.path)
                with server._lock:
                    server.unknown.append((self.command, path))
                self._error(404, "UnknownRoute", f"the test Hub server does not know {self.command} {path}")

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch  # noqa: N815

        # --------------------------------------------------------------- routes
        def _route(self, method: str, path: str) -> bool:
            if method == "POST" and path == "/api/repos/create":
                return self._create_repo()
            if method == "POST" and path == "/api/validate-yaml":
                return self._validate_yaml()
            match = API.match(path)
            if match:
                kind, repo_id, action, revision, rest = match.groups()
                return self._api(method, TYPES[kind], repo_id, action, unquote(revision or "main"), rest or "")
            match = RESOLVE.match(path)
            if match and method in ("GET", "HEAD"):
                kind, repo_id, revision, filename = match.groups()
                return self._resolve(TYPES.get(kind or "models", "model"), repo_id, unquote(revision),
                                     unquote(filename))
            return False

        def _repo(self, repo_type: str, repo_id: str) -> Repo | None:
            repo = server.repos.get((repo_type, repo_id))
            if repo is None or (repo.private and not self.headers.get("Authorization")):
                self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                return None
            return repo

        def _create_repo(self) -> bool:
            payload = json.loads(self._body())
            repo_type = payload.get("type") or "model"
            org = payload.get("organization")
            repo_id = f"{org}/{payload['name']}" if org else payload["name"]
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            url = f"{server.url}/{prefix}{repo_id}"
            if (repo_type, repo_id) in server.repos:
                self._json(409, {"error": "You already created this repo", "url": url})
                return True
            private = payload.get("visibility", "public") != "public" or bool(payload.get("private"))
            server.repos[(repo_type, repo_id)] = Repo(private=private)
            server.add_commit(repo_type, repo_id, "main", {".gitattributes": b""}, "initial commit")
            self._json(200, {"url": url, "name": repo_id})
            return True

        def _validate_yaml(self) -> bool:
            content = json.loads(self._body())["content"]
            match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
            try:
                if match:
                    yaml.safe_load(match.group(1))
            except yaml.YAMLError as err:
                self._json(400, {"errors": [{"message": str(err)}]})
                return True
            self._json(200, {"errors": [], "warnings": []})
            return True

        def _api(self, method: str, repo_type: str, repo_id: str, action: str | None, revision: str,
                 rest: str) -> bool:
            repo = self._repo(repo_type, repo_id)
            if repo is None:
                return True
            if action == "branch" and method == "POST":
                if revision in repo.branches:
                    self._error(409, "BranchExists", f"branch {revision} already exists")
                    return True
                body = self._body()
                start = (json.loads(body) if body else {}).get("startingPoint") or "main"
                repo.branches[revision] = repo.commit_of(start)
                self._json(200, {})
                return True
            oid = repo.commit_of(revision)
            if oid is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return True
            files = repo.commits[oid]
            if method == "GET" and action in (None, "revision"):
                self._json(200, {"id": repo_id, "sha": oid, "private": repo.private,
                                 "siblings": [{"rfilename": name} for name in sorted(files)]})
            elif method == "GET" and action == "tree":
                prefix = rest.lstrip("/")
                self._json(200, [{"type": "file", "path": name, "size": len(data), "oid": git_blob_id(data)}
                                 for name, data in sorted(files.items()) if name.startswith(prefix)])
            elif method == "POST" and action == "preupload":
                payload = json.loads(self._body())
                self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                           for f in payload["files"]]})
            elif method == "POST" and action == "commit":
                return self._commit(repo_type, repo_id, revision)
            else:
                return False
            return True

        def _commit(self, repo_type: str, repo_id: str, branch: str) -> bool:
            if self.headers.get("Content-Type") != "application/x-ndjson":
                return False
            changes: dict[str, bytes | None] = {}
            message = ""
            for line in self._body().splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    message = value["summary"]
                elif item["key"] == "file" and value.get("encoding") == "base64":
                    changes[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "deletedFile":
                    changes[value["path"]] = None
                else:  # LFS, copies and folders are not spoken here
                    log.warning("hub_server: unsupported commit operation %s", item["key"])
                    return False
            oid = server.add_commit(repo_type, repo_id, branch, changes, message)
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            self._json(200, {"commitUrl": f"{server.url}/{prefix}{repo_id}/commit/{oid}", "commitOid": oid,
                             "pullRequestUrl": None})
            return True

        def _resolve(self, repo_type: str, repo_id: str, revision: str, filename: str) -> bool:
            repo = self._repo(repo_type, repo_id)
            if repo is None:
                return True
            oid = repo.commit_of(revision)
            if oid is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return True
            data = repo.commits[oid].get(filename)
            if data is None:
                self.send_response(404)
                body = b'{"error": "Entry not found"}'
                for key, value in (("X-Error-Code", "EntryNotFound"), ("X-Repo-Commit", oid),
                                   ("Content-Type", "application/json"), ("Content-Length", str(len(body)))):
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                return True
            self._send(200, data, {"ETag": f'"{git_blob_id(data)}"', "X-Repo-Commit": oid},
                       content_type="application/octet-stream")
            return True

    return Handler
