"""A small Hugging Face Hub over real HTTP on 127.0.0.1, enough for HfApi's upload / tag / download.

Endpoints: repos/create, validate-yaml, preupload, LFS batch + PUT + verify, commit (ndjson), tag,
refs, revision, resolve (HEAD/GET). State is in memory; ``requests`` records what the client sent;
``fail`` injects server errors for the next N calls of an endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

TOKENS = {"hf_test_token": "alice"}


class Repo:
    def __init__(self, owner: str, private: bool) -> None:
        self.owner, self.private = owner, private
        self.commits: dict[str, dict[str, Any]] = {}
        root = self._add({}, None, "initial commit")
        self.branches = {"main": root}
        self.tags: dict[str, str] = {}

    def _add(self, files: dict[str, dict[str, Any]], parent: str | None, message: str) -> str:
        oid = hashlib.sha1(json.dumps([sorted(files), parent, message, len(self.commits)]).encode()).hexdigest()
        self.commits[oid] = {"files": files, "parent": parent, "message": message}
        return oid

    def resolve(self, rev: str) -> str | None:
        rev = unquote(rev)
        return self.branches.get(rev) or self.tags.get(rev) or (rev if rev in self.commits else None)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail: dict[str, int] = {}
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                hub.handle(self, "GET")

            def do_HEAD(self) -> None:
                hub.handle(self, "HEAD")

            def do_POST(self) -> None:
                hub.handle(self, "POST")

            def do_PUT(self) -> None:
                hub.handle(self, "PUT")

            def do_DELETE(self) -> None:
                hub.handle(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ plumbing
    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        path = urlparse(h.path).path
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        self.requests.append((method, path))
        user = TOKENS.get((h.headers.get("Authorization") or "").removeprefix("Bearer ").strip())
        try:
            with self.lock:
                status, headers, payload = self.route(method, path, body, user)
        except KeyError as e:
            status, headers, payload = 404, {"X-Error-Code": "RepoNotFound"}, {"error": f"not found: {e}"}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        if not isinstance(payload, bytes):
            h.send_header("Content-Type", "application/json")
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(data)

    def _failing(self, name: str) -> bool:
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            return True
        return False

    def route(self, method: str, path: str, body: bytes, user: str | None) -> tuple[int, dict, Any]:
        parts = path.strip("/").split("/")
        if path == "/api/repos/create":
            if user is None:
                return 401, {}, {"error": "Invalid credentials"}
            req = json.loads(body)
            owner = req.get("organization") or user
            if owner != user:
                return 403, {}, {"error": f"You don't have the rights to create a model under the namespace '{owner}'"}
            repo_id = f"{owner}/{req['name']}"
            if repo_id in self.repos:
                return 409, {}, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            self.repos[repo_id] = Repo(owner, bool(req.get("private")))
            return 200, {}, {"url": f"{self.url}/{repo_id}", "name": repo_id}
        if path == "/api/validate-yaml":
            return 200, {}, {}
        if parts[:2] == ["api", "models"] and len(parts) >= 5:
            repo_id, action, rest = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
            repo = self.repos[repo_id]
            if action in ("preupload", "commit", "tag") and (user is None or user != repo.owner):
                return 403, {}, {"error": "Forbidden: you do not own this repository"}
            return self.model_api(repo_id, repo, method, action, rest, body)
        if len(parts) >= 4 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"][: len(parts) - 2]:
            req = json.loads(body)
            objs = []
            for o in req["objects"]:
                entry: dict[str, Any] = {"oid": o["oid"], "size": o["size"]}
                if o["oid"] not in self.lfs:
                    entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{o['oid']}"},
                                        "verify": {"href": f"{self.url}/lfs-verify"}}
                objs.append(entry)
            return 200, {}, {"transfer": "basic", "objects": objs}
        if parts[0] == "lfs-upload" and method == "PUT":
            if self._failing("lfs"):
                return 503, {}, {"error": "upstream timeout"}
            if hashlib.sha256(body).hexdigest() != parts[1]:
                return 400, {}, {"error": "sha256 mismatch"}
            self.lfs[parts[1]] = body
            return 200, {}, {}
        if parts[0] == "lfs-verify":
            return (200, {}, {}) if json.loads(body)["oid"] in self.lfs else (404, {}, {"error": "missing object"})
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id = f"{parts[0]}/{parts[1]}"
            repo = self.repos[repo_id]
            oid = repo.resolve(parts[3])
            if oid is None:
                return 404, {"X-Error-Code": "RevisionNotFound"}, {"error": "Invalid rev id"}
            f = repo.commits[oid]["files"].get(unquote("/".join(parts[4:])))
            if f is None:
                return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": oid}, {"error": "Entry not found"}
            data = self.lfs[f["lfs"]] if "lfs" in f else f["data"]
            headers = {"X-Repo-Commit": oid, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
            if "lfs" in f:
                headers.update({"X-Linked-Etag": f'"{f["lfs"]}"', "X-Linked-Size": str(len(data))})
            return 200, headers, data
        return 404, {}, {"error": f"no route {method} {path}"}

    def model_api(self, repo_id: str, repo: Repo, method: str, action: str, rest: str, body: bytes) -> tuple[int, dict, Any]:
        if action == "preupload":
            files = json.loads(body)["files"]
            return 200, {}, {"files": [{"path": f["path"], "uploadMode": "lfs" if f["size"] > 1024 else "regular",
                                        "shouldIgnore": False, "oid": None} for f in files]}
        if action == "commit":
            if self._failing("commit"):
                return 500, {}, {"error": "internal error"}
            branch = unquote(rest) or "main"
            files = dict(repo.commits[repo.branches[branch]]["files"])
            message = ""
            for line in body.splitlines():
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    message = value["summary"]
                elif key == "file":
                    files[value["path"]] = {"data": base64.b64decode(value["content"])}
                elif key == "lfsFile":
                    if value["oid"] not in self.lfs:
                        return 422, {}, {"error": f"LFS object {value['oid']} was not uploaded"}
                    files[value["path"]] = {"lfs": value["oid"]}
                elif key == "deletedFile":
                    files.pop(value["path"], None)
            oid = repo._add(files, repo.branches[branch], message)
            repo.branches[branch] = oid
            return 200, {}, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True,
                             "pullRequestUrl": None}
        if action == "tag" and method == "POST":
            name = json.loads(body)["tag"]
            if name in repo.tags:
                return 409, {}, {"error": f"Tag {name} already exists"}
            oid = repo.resolve(rest)
            if oid is None:
                return 404, {"X-Error-Code": "RevisionNotFound"}, {"error": "Invalid rev id"}
            repo.tags[name] = oid
            return 200, {}, {}
        if action == "tag" and method == "DELETE":
            repo.tags.pop(unquote(rest), None)
            return 200, {}, {}
        if action == "refs":
            return 200, {}, {
                "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in repo.branches.items()],
                "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": o} for t, o in repo.tags.items()],
                "converts": [],
            }
        if action == "revision":
            oid = repo.resolve(rest)
            if oid is None:
                return 404, {"X-Error-Code": "RevisionNotFound"}, {"error": "Invalid rev id"}
            return 200, {}, {"id": repo_id, "sha": oid, "private": repo.private,
                             "siblings": [{"rfilename": p} for p in sorted(repo.commits[oid]["files"])]}
        return 404, {}, {"error": f"no route {action}"}

    def files_at(self, repo_id: str, rev: str) -> dict[str, bytes]:
        repo = self.repos[repo_id]
        commit = repo.commits[repo.resolve(rev) or ""]
        return {p: (self.lfs[f["lfs"]] if "lfs" in f else f["data"]) for p, f in commit["files"].items()}
