"""Publish to / pull from OpenXLab the way its own tutorial does: git + git-lfs to the model repo host.

The access token travels as an HTTP header (``http.extraHeader``), never in a URL or in the repo's
config, and is scrubbed from every error message. Versions are annotated tags ``v<version>``. The
``openxlab`` SDK is not needed (it pins old requests / setuptools / tqdm).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from adapterhub.errors import PublishError
from adapterhub.hub.publisher import (
    Publisher,
    PushResult,
    published_hash,
    register_pulled,
    stage_version,
    with_retries,
)
from adapterhub.registry import Registry, VersionRecord
from adapterhub.registry.validation import MANIFEST

DEFAULT_BASE = "https://code.openxlab.org.cn"


class _GitError(Exception):
    def __init__(self, args: list[str], stderr: str) -> None:
        super().__init__(stderr)
        self.cmd = args
        self.stderr = stderr


class OpenXLabPublisher(Publisher):
    scheme = "openxlab"

    def __init__(self, *, base_url: str | None = None, token: str | None = None, user: str | None = None,
                 retries: int = 3, backoff: float = 1.0) -> None:
        self.base_url = (base_url or os.environ.get("OPENXLAB_GIT_URL") or DEFAULT_BASE).rstrip("/")
        self.token = token or os.environ.get("OPENXLAB_TOKEN")
        self.user = user or os.environ.get("OPENXLAB_USER") or "adapterhub"
        self.retries, self.backoff = retries, backoff
        if shutil.which("git") is None:
            raise PublishError("publishing to OpenXLab needs git (and git-lfs)")

    def url(self, repo: str) -> str:
        return f"{self.base_url}/{repo}.git"

    def _local(self) -> bool:
        return self.base_url.startswith("file://")

    def _git(self, args: list[str], cwd: Path | None = None, check: bool = True) -> str:
        cmd = ["git"]
        if self.token and not self._local():
            basic = base64.b64encode(f"{self.user}:{self.token}".encode()).decode()
            cmd += ["-c", f"http.extraHeader=Authorization: Basic {basic}"]
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_LFS_SKIP_SMUDGE": "0"}
        proc = subprocess.run(cmd + args, cwd=cwd, capture_output=True, text=True, env=env)
        if check and proc.returncode != 0:
            err = proc.stderr.strip()
            if self.token:
                err = err.replace(self.token, "***")
            raise _GitError(args, err)
        return proc.stdout

    def _lfs_ready(self) -> None:
        try:
            self._git(["lfs", "version"])
        except _GitError as e:
            raise PublishError("git-lfs is not installed (apt-get install git-lfs): nothing was published") from e

    def push(self, registry: Registry, ref: str, repo: str, *, private: bool = False,
             alias_tags: bool = False) -> PushResult:
        if not self.token and not self._local():
            raise PublishError("no OpenXLab token: set OPENXLAB_TOKEN (and OPENXLAB_USER) — nothing was published")
        self._lfs_ready()
        record, manifest, folder = stage_version(registry, ref, repo)
        tag = f"v{record.version}"
        work = Path(tempfile.mkdtemp(prefix="adapterhub-oxl-"))
        url = self.url(repo)
        step = "reach the repository"
        try:
            try:
                remote_tags = self._git(["ls-remote", "--tags", url])
            except _GitError as e:
                raise PublishError(f"cannot reach openxlab:{repo} ({_first(e.stderr)}): create the model repository "
                                   "on OpenXLab first; nothing was published") from e
            self._git(["init", "-q", "-b", "main"], cwd=work)
            self._git(["remote", "add", "origin", url], cwd=work)
            if f"refs/tags/{tag}" in remote_tags:
                self._git(["fetch", "-q", "--depth", "1", "origin", "tag", tag], cwd=work)
                text = self._git(["show", f"{tag}:{MANIFEST}"], cwd=work, check=False)
                if published_hash(text) == record.content_hash:
                    return PushResult(repo, tag, None, url, created=False)
                raise PublishError(f"openxlab:{repo} already has tag {tag} with different content: nothing was published")
            if "refs/heads/main" in self._git(["ls-remote", "--heads", url]):
                self._git(["fetch", "-q", "--depth", "1", "origin", "main"], cwd=work)
                self._git(["checkout", "-q", "-B", "main", "FETCH_HEAD"], cwd=work)
                self._git(["rm", "-rq", "--ignore-unmatch", "."], cwd=work)
            for f in folder.iterdir():
                shutil.copy2(f, work / f.name)
            self._git(["lfs", "install", "--local"], cwd=work)
            self._git(["lfs", "track", "*.safetensors", "*.bin", "*.gguf"], cwd=work)
            self._git(["add", "-A"], cwd=work)
            self._git(["-c", "user.name=adapterhub", "-c", "user.email=adapterhub@localhost", "commit", "-q",
                       "-m", f"adapterhub: {record.ref}", "-m", f"content sha256:{record.content_hash}"], cwd=work)
            self._git(["-c", "user.name=adapterhub", "-c", "user.email=adapterhub@localhost", "tag", "-a", tag,
                       "-m", f"{record.ref} sha256:{record.content_hash}"], cwd=work)
            commit = self._git(["rev-parse", "HEAD"], cwd=work).strip()
            step = "push"
            # One push of branch + tag: git updates both refs or neither.
            with_retries(lambda: self._git(["push", "-q", "--atomic", "origin", "main", tag], cwd=work),
                         "git push", retries=self.retries, backoff=self.backoff, retry_on=(_GitError,))
            if alias_tags:
                for alias in record.aliases:
                    self._git(["tag", "-f", alias], cwd=work)
                    self._git(["push", "-q", "-f", "origin", f"refs/tags/{alias}"], cwd=work)
        except _GitError as e:
            raise PublishError(f"cannot {step} to openxlab:{repo} after {self.retries if step == 'push' else 1} tries "
                               f"({_first(e.stderr)}); nothing was published (the push is atomic)") from e
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(folder.parent, ignore_errors=True)
        return PushResult(repo, tag, commit, url, created=True)

    def pull(self, registry: Registry, repo: str, revision: str | None, name: str) -> tuple[VersionRecord, bool]:
        self._lfs_ready()
        work = Path(tempfile.mkdtemp(prefix="adapterhub-oxl-pull-"))
        src = f"openxlab:{repo}@{revision or 'main'}"
        try:
            args = ["clone", "-q", "--depth", "1"] + (["--branch", revision] if revision else []) + [self.url(repo), str(work / "r")]
            try:
                with_retries(lambda: self._git(args), "git clone", retries=self.retries, backoff=self.backoff,
                             retry_on=(_GitError,))
                self._git(["lfs", "pull"], cwd=work / "r")
            except _GitError as e:
                raise PublishError(f"cannot clone {src} ({_first(e.stderr)})") from e
            return register_pulled(registry, work / "r", name, src)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _first(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"
