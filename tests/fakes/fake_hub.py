# Copyright 2026-present the smat-peft authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""A loopback, in-memory stand-in for the Hugging Face Hub, for offline tests of push/pull code paths.

`FakeHub` is a standard-library HTTP server (`ThreadingHTTPServer` on `127.0.0.1`, port 0) that speaks the part of the
Hub API that `huggingface_hub` 2.x uses for `create_repo`, `create_branch`, `create_commit`/`upload_folder` (regular,
non-LFS uploads only), `model_info`/`repo_info`, `list_repo_refs`, `list_repo_files` and `hf_hub_download`, i.e. what
transformers' and peft's `push_to_hub`/`from_pretrained` call. Writes need an `Authorization: Bearer ...` header;
private repos are hidden (404 `RepoNotFound`) from anonymous reads, as on the Hub.

The `fake_hub` pytest fixture starts a server, points `huggingface_hub` and transformers at it (also when they were
imported before the test, since both read `HF_ENDPOINT` at import) and stops it afterwards.

Example:

```py
>>> from huggingface_hub import HfApi, hf_hub_download
>>> def test_roundtrip(fake_hub, tmp_path):
...     api = HfApi()
...     repo_id = api.create_repo("user/demo", private=True).repo_id
...     (tmp_path / "a.txt").write_text("hi")
...     api.upload_folder(folder_path=tmp_path, repo_id=repo_id)
...     assert fake_hub.files(repo_id)["a.txt"] == b"hi"
...     assert fake_hub.repo(repo_id).private
...     assert open(hf_hub_download(repo_id, "a.txt")).read() == "hi"
```
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socketserver
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Optional
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml


FAKE_TOKEN = "hf_fake"
DEFAULT_USER = "user"
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_SEG = r"[^/]+"
_REPO = rf"(?P<repo>{_SEG}/{_SEG})"
_API = rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}"
_RESOLVE = re.compile(rf"^/(?:(?P<type>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>{_SEG})/(?P<path>.+)$")
# (method, pattern, handler name); patterns match the raw (still percent-encoded) path.
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("GET", re.compile(rf"{_API}(?:/revision/(?P<rev>{_SEG}))?$"), "repo_info"),
    ("GET", re.compile(rf"{_API}/refs$"), "refs"),
    ("GET", re.compile(rf"{_API}/tree/(?P<rev>{_SEG})(?:/(?P<path>.*))?$"), "tree"),
    ("POST", re.compile(rf"{_API}/preupload/(?P<rev>{_SEG})$"), "preupload"),
    ("POST", re.compile(rf"{_API}/commit/(?P<rev>{_SEG})$"), "commit"),
    ("POST", re.compile(rf"{_API}/branch/(?P<rev>{_SEG})$"), "create_branch"),
    ("DELETE", re.compile(rf"{_API}/branch/(?P<rev>{_SEG})$"), "delete_branch"),
    ("GET", _RESOLVE, "resolve"),
    ("HEAD", _RESOLVE, "resolve"),
]


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's content: what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _fake_tree_id(folder: str) -> str:
    return hashlib.sha1(f"tree {folder}".encode()).hexdigest()


@dataclass
class FakeCommit:
    """One commit: its id, the branch it was made on, its message and the full snapshot of files after it."""

    oid: str
    branch: str
    message: str
    description: str
    files: dict[str, bytes]


@dataclass
class FakePullRequest:
    """A pull request opened by a `create_pr=True` commit: its number, target branch, title and description. Its
    commits live on the ref `refs/pr/<num>` (in `FakeRepo.branches`), as on the Hub."""

    num: int
    base: str
    title: str
    description: str

    @property
    def ref(self) -> str:
        return f"refs/pr/{self.num}"


@dataclass
class FakeRepo:
    """A repository: visibility, branches (name → head commit id, also `refs/pr/<n>`), every commit by id, and the
    pull requests by number."""

    repo_id: str
    repo_type: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, FakeCommit] = field(default_factory=dict)
    pull_requests: dict[int, FakePullRequest] = field(default_factory=dict)

    def resolve(self, revision: str) -> Optional[FakeCommit]:
        """The commit a branch name or a (full or abbreviated) commit id points to, or None."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        matches = [c for oid, c in self.commits.items() if len(revision) >= 7 and oid.startswith(revision)]
        return matches[0] if len(matches) == 1 else None

    def history(self, branch: str = "main") -> list[FakeCommit]:
        """Commits made on `branch`, oldest first."""
        return [c for c in self.commits.values() if c.branch == branch]


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class FakeHub:
    """In-memory Hub state plus the HTTP server serving it. Use as a context manager or via `start()`/`stop()`.

    Attributes:
        url (`str`): The endpoint, `http://127.0.0.1:<port>` (available once started).
        repos (`dict[str, FakeRepo]`): Repositories by `"<type>:<namespace>/<name>"`; see `repo()`.
        requests (`list[tuple[str, str]]`): `(method, path)` of every request served, for debugging.
    """

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._counter = 0
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self.url = ""

    # ------------------------------------------------------------------------------------------------------------
    # lifecycle
    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------------------
    # state helpers for tests
    def repo(self, repo_id: str, repo_type: str = "model") -> FakeRepo:
        """The repository `repo_id`; raises `KeyError` if it was never created."""
        return self.repos[f"{repo_type}:{repo_id}"]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Path → content of every file of `repo_id` at `revision` (a branch or a commit id)."""
        commit = self.repo(repo_id, repo_type).resolve(revision)
        if commit is None:
            raise KeyError(f"{repo_id} has no revision {revision!r}")
        return dict(commit.files)

    # ------------------------------------------------------------------------------------------------------------
    # API, called by the handler with the lock held; each returns (status, JSON body)
    def _new_oid(self, *parts: str) -> str:
        self._counter += 1
        return hashlib.sha1("\0".join((str(self._counter), *parts)).encode()).hexdigest()

    def _commit(self, repo: FakeRepo, branch: str, message: str, description: str, files: dict[str, bytes]) -> str:
        oid = self._new_oid(repo.repo_id, branch, message)
        repo.commits[oid] = FakeCommit(oid, branch, message, description, files)
        repo.branches[branch] = oid
        return oid

    def _get_repo(self, type_: Optional[str], repo_id: str, auth: Optional[str]) -> FakeRepo:
        repo = self.repos.get(f"{_TYPES.get(type_ or 'models')}:{repo_id}")
        if repo is None or (repo.private and auth is None):
            raise _HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _get_commit(self, repo: FakeRepo, revision: str) -> FakeCommit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _repo_url(self, repo: FakeRepo) -> str:
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"{self.url}/{prefix}{repo.repo_id}"

    def api_create_repo(self, body: dict[str, Any], auth: Optional[str], **_: Any) -> tuple[int, Any]:
        repo_id = f"{body.get('organization') or DEFAULT_USER}/{body['name']}"
        repo_type = body.get("type") or "model"
        # huggingface_hub 2.x sends `visibility`; older clients sent `private`.
        private = body.get("visibility") == "private" or bool(body.get("private"))
        key = f"{repo_type}:{repo_id}"
        if key in self.repos:
            return 409, {"error": "You already created this model repo", "url": self._repo_url(self.repos[key])}
        repo = self.repos[key] = FakeRepo(repo_id, repo_type, private)
        self._commit(repo, "main", "initial commit", "", {".gitattributes": b"*.safetensors filter=lfs diff=lfs\n"})
        return 200, {"url": self._repo_url(repo), "name": repo_id, "id": repo_id}

    def api_validate_yaml(self, body: dict[str, Any], **_: Any) -> tuple[int, Any]:
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", body.get("content", ""), re.DOTALL)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as e:
            return 400, {"errors": [{"message": f"Invalid YAML: {e}"}], "warnings": []}
        if metadata is not None and not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "YAML metadata must be a mapping"}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def api_whoami(self, auth: Optional[str], **_: Any) -> tuple[int, Any]:
        if auth is None:
            raise _HubError(401, "Invalid credentials in Authorization header")
        return 200, {"type": "user", "name": DEFAULT_USER, "orgs": [], "auth": {"type": "access_token"}}

    def api_repo_info(self, type: str, repo: str, auth: Optional[str], rev: Optional[str] = None, **_: Any):
        fake = self._get_repo(type, repo, auth)
        commit = self._get_commit(fake, rev or "main")
        return 200, {
            "id": fake.repo_id,
            "modelId": fake.repo_id,
            "sha": commit.oid,
            "private": fake.private,
            "disabled": False,
            "gated": False,
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }

    def api_refs(self, type: str, repo: str, auth: Optional[str], **_: Any) -> tuple[int, Any]:
        fake = self._get_repo(type, repo, auth)
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in fake.branches.items()]
        return 200, {"branches": branches, "converts": [], "tags": []}

    def api_tree(self, type: str, repo: str, rev: str, auth: Optional[str], query: dict, path: Optional[str] = None,
                 **_: Any) -> tuple[int, Any]:
        commit = self._get_commit(self._get_repo(type, repo, auth), rev)
        prefix = f"{path.strip('/')}/" if path else ""
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries: dict[str, dict[str, Any]] = {}
        for file_path, data in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix):].split("/")
            # folders on the way to the file (only the first one when not recursive)
            for depth in range(1, len(rest) if recursive else min(2, len(rest))):
                folder = prefix + "/".join(rest[:depth])
                entries.setdefault(folder, {"type": "directory", "path": folder, "oid": _fake_tree_id(folder)})
            if recursive or len(rest) == 1:
                entries[file_path] = {"type": "file", "path": file_path, "size": len(data), "oid": git_blob_sha1(data)}
        if prefix and not entries:
            raise _HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        return 200, list(entries.values())

    def api_preupload(self, type: str, repo: str, rev: str, body: dict[str, Any], auth: Optional[str], **_: Any):
        self._require_auth(auth)
        fake = self._get_repo(type, repo, auth)
        existing = self._get_commit(fake, rev).files
        files = [
            {
                "path": f["path"],
                "uploadMode": "regular",  # never "lfs": the fake has no LFS/Xet storage
                "shouldIgnore": False,
                "oid": git_blob_sha1(existing[f["path"]]) if f["path"] in existing else None,
            }
            for f in body.get("files", [])
        ]
        return 200, {"files": files, "commitOid": fake.branches.get(rev)}

    def api_commit(self, type: str, repo: str, rev: str, raw: bytes, auth: Optional[str], query: dict, **_: Any):
        self._require_auth(auth)
        fake = self._get_repo(type, repo, auth)
        if rev not in fake.branches:
            raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        files = dict(fake.commits[fake.branches[rev]].files)
        header: dict[str, Any] = {}
        for line in raw.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
                parent = value.get("parentCommit")
                if parent and parent != fake.branches[rev]:
                    raise _HubError(412, f"Parent commit {parent} is not the head of {rev}")
            elif key == "file":
                encoding = value.get("encoding", "base64")
                content = value["content"]
                files[value["path"]] = base64.b64decode(content) if encoding == "base64" else content.encode()
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise _HubError(404, f"File not found: {value['path']}", "EntryNotFound")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(folder)}
            else:  # lfsFile, ...: the fake only accepts regular uploads (preupload never answers "lfs")
                raise _HubError(400, f"Unsupported commit operation {key!r}")
        summary, description = header.get("summary", ""), header.get("description", "")
        pull_request = None
        if query.get("create_pr", ["0"])[0].lower() in ("1", "true"):
            # a new pull request against `rev`: its commit goes to refs/pr/<n>, `rev` itself is untouched
            pull_request = FakePullRequest(len(fake.pull_requests) + 1, rev, summary, description)
            fake.pull_requests[pull_request.num] = pull_request
            rev = pull_request.ref
        oid = self._commit(fake, rev, summary, description, files)
        return 200, {
            "success": True,
            "commitOid": oid,
            # on the same host as the endpoint, otherwise the client rejects the URL (HfUriError)
            "commitUrl": f"{self._repo_url(fake)}/commit/{oid}",
            "pullRequestUrl": f"{self._repo_url(fake)}/discussions/{pull_request.num}" if pull_request else None,
        }

    def api_create_branch(self, type: str, repo: str, rev: str, body: dict[str, Any], auth: Optional[str], **_: Any):
        self._require_auth(auth)
        fake = self._get_repo(type, repo, auth)
        if rev in fake.branches:
            raise _HubError(409, f"Reference refs/heads/{rev} already exists")
        if rev.startswith("refs/"):
            raise _HubError(400, f"Invalid reference for a branch: {rev}")
        start = self._get_commit(fake, body.get("startingPoint") or "main")
        fake.branches[rev] = start.oid
        return 200, {}

    def api_delete_branch(self, type: str, repo: str, rev: str, auth: Optional[str], **_: Any) -> tuple[int, Any]:
        self._require_auth(auth)
        fake = self._get_repo(type, repo, auth)
        if rev not in fake.branches or rev == "main":
            raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        del fake.branches[rev]
        return 200, {}

    @staticmethod
    def _require_auth(auth: Optional[str]) -> None:
        if auth is None:
            raise _HubError(401, "Invalid credentials in Authorization header")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(), a reverse name lookup; the fake needs no host name.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to `FakeHub.api_*` (JSON) or serves file bytes (resolve)."""

    fake_hub: FakeHub

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        hub = self.fake_hub
        authorization = self.headers.get("Authorization", "")
        auth = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else None
        with hub._lock:
            hub.requests.append((method, split.path))
        for route_method, pattern, name in _ROUTES:
            match = pattern.match(split.path) if route_method == method else None
            if match is None:
                continue
            # path segments are percent-encoded (revisions with `/` arrive as `%2F`)
            params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
            try:
                with hub._lock:
                    if name == "resolve":
                        return self._resolve(method, params, auth)
                    body = json.loads(raw) if raw and name != "commit" else {}
                    status, payload = getattr(hub, f"api_{name}")(
                        **params, body=body, raw=raw, auth=auth, query=parse_qs(split.query)
                    )
            except _HubError as e:
                return self._send_error(e)
            return self._send(status, json.dumps(payload).encode(), "application/json")
        self._send_error(_HubError(404, f"The fake Hub has no route for {method} {split.path}"))

    def _resolve(self, method: str, params: dict[str, str], auth: Optional[str]) -> None:
        hub = self.fake_hub
        try:
            repo = hub._get_repo(params.get("type"), params["repo"], auth)
            commit = hub._get_commit(repo, params["rev"])
            if params["path"] not in commit.files:
                raise _HubError(404, f"Entry not found: {params['path']}", "EntryNotFound")
        except _HubError as e:
            # the Hub reports the commit of a missing entry too, which lets clients cache the miss
            extra = {"X-Repo-Commit": commit.oid} if e.code == "EntryNotFound" else {}
            return self._send_error(e, extra)
        data = commit.files[params["path"]]
        headers = {"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": commit.oid, "X-Linked-Size": str(len(data))}
        self._send(200, data, "application/octet-stream", headers, head=method == "HEAD")

    def _send_error(self, error: _HubError, extra: Optional[dict[str, str]] = None) -> None:
        headers = {"X-Error-Message": error.message, **(extra or {})}
        if error.code:
            headers["X-Error-Code"] = error.code
        body = json.dumps({"error": error.message}).encode()
        self._send(error.status, body, "application/json", headers, head=self.command == "HEAD")

    def _send(self, status: int, body: bytes, content_type: str, headers: Optional[dict[str, str]] = None,
              head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _patch_hub_clients(monkeypatch: pytest.MonkeyPatch, url: str, cache_dir: str) -> None:
    """Point already-imported `huggingface_hub` and transformers at `url`: both copy `HF_ENDPOINT` (and the other
    environment variables set by the fixture) into module state at import time."""
    from huggingface_hub import constants
    from huggingface_hub import hf_api as hf_api_module

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_URL_HOSTS", frozenset(constants.HF_URL_HOSTS | {"127.0.0.1"}))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache_dir)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # huggingface_hub caches a registry fetched from `{ENDPOINT}/api/agent-harnesses` (the fake answers 404) here.
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", os.path.join(cache_dir, ".agent_harnesses.json"))
    # The module-level `HfApi()` behind `huggingface_hub.model_info`, `file_exists`, ... froze its endpoint.
    monkeypatch.setattr(hf_api_module.api, "endpoint", url)
    # transformers caches one shared `HfApi` (`transformers.utils.hub.hf_api()`): drop it so it is rebuilt.
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
        monkeypatch.setattr(transformers_hub, "_hf_api", None)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    """A running `FakeHub`, with `huggingface_hub`/transformers/peft pointed at it and a fresh, empty cache.

    Sets `HF_ENDPOINT`, `HF_TOKEN=hf_fake`, `HF_HUB_CACHE`, `HF_HUB_DISABLE_XET=1` (and the matching
    `huggingface_hub.constants`), so `push_to_hub`, `HfApi()` and `from_pretrained("user/repo")` all talk to the
    fake. Everything is restored and the server stopped after the test.
    """
    cache_dir = str(tmp_path_factory.mktemp("hf_hub_cache"))
    with FakeHub() as hub:
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_OIDC_RESOURCE", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
        monkeypatch.setenv("HF_HUB_CACHE", cache_dir)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        _patch_hub_clients(monkeypatch, hub.url, cache_dir)
        yield hub
