"""The OpenXLab transport, the way its own tutorial publishes: git + git-lfs to the model repo host.

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
from collections.abc import Callable
from pathlib import Path

from adapterhub.errors import PublishError
from adapterhub.hub.transport import HubTransport, with_retries
from adapterhub.registry.manifest import MANIFEST

DEFAULT_BASE = "https://code.openxlab.org.cn"


class _GitError(Exception):
    def __init__(self, args: list[str], stderr: str) -> None:
        super().__init__(stderr)
        self.cmd = args
        self.stderr = stderr


class OpenXLabTransport(HubTransport):
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

    def _workdir(self, repo: str) -> Path:
        work = Path(tempfile.mkdtemp(prefix="adapterhub-oxl-"))
        self._git(["init", "-q", "-b", "main"], cwd=work)
        self._git(["remote", "add", "origin", self.url(repo)], cwd=work)
        return work

    def _ls_remote(self, repo: str, *args: str) -> dict[str, str]:
        """ref name → commit (annotated tags peeled)."""
        refs: dict[str, str] = {}
        for line in self._git(["ls-remote", *args, self.url(repo)]).splitlines():
            sha, _, name = line.partition("\t")
            if name.endswith("^{}"):
                refs[name[:-3]] = sha
            else:
                refs.setdefault(name, sha)
        return refs

    # ---------------------------------------------------------------- seam
    def ready_to_push(self) -> None:
        if not self.token and not self._local():
            raise PublishError("no OpenXLab token: set OPENXLAB_TOKEN (and OPENXLAB_USER) — nothing was published")
        self._lfs_ready()

    def ready_to_pull(self) -> None:
        self._lfs_ready()

    def open_repo(self, repo: str, *, private: bool) -> None:
        try:
            self._git(["ls-remote", "--heads", self.url(repo)])
        except _GitError as e:
            raise PublishError(f"cannot reach openxlab:{repo} ({_first(e.stderr)}): create the model repository "
                               "on OpenXLab first; nothing was published") from e

    def tag_commit(self, repo: str, tag: str) -> str | None:
        return self._ls_remote(repo, "--tags").get(f"refs/tags/{tag}")

    def head_commit(self, repo: str) -> str | None:
        return self._ls_remote(repo, "--heads").get("refs/heads/main")

    def manifest_at(self, repo: str, revision: str) -> str | None:
        work = self._workdir(repo)
        try:
            self._git(["fetch", "-q", "--depth", "1", "origin", revision], cwd=work)
            return self._git(["show", f"FETCH_HEAD:{MANIFEST}"], cwd=work)
        except _GitError:
            return None
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def publish(self, repo: str, folder: Path, *, tag: str, message: str, description: str,
                commit: str | None = None) -> str:
        work = self._workdir(repo)
        ident = ["-c", "user.name=adapterhub", "-c", "user.email=adapterhub@localhost"]
        try:
            if commit is None:
                if self.head_commit(repo) is not None:
                    self._git(["fetch", "-q", "--depth", "1", "origin", "main"], cwd=work)
                    self._git(["checkout", "-q", "-B", "main", "FETCH_HEAD"], cwd=work)
                    self._git(["rm", "-rq", "--ignore-unmatch", "."], cwd=work)
                for f in folder.iterdir():
                    shutil.copy2(f, work / f.name)
                self._git(["lfs", "install", "--local"], cwd=work)
                self._git(["lfs", "track", "*.safetensors", "*.bin", "*.gguf"], cwd=work)
                self._git(["add", "-A"], cwd=work)
                self._git([*ident, "commit", "-q", "-m", message, "-m", description], cwd=work)
                refs = ["main", tag]
            else:
                self._git(["fetch", "-q", "--depth", "1", "origin", "main"], cwd=work)
                self._git(["checkout", "-q", "-B", "main", commit], cwd=work)
                refs = [tag]
            self._git([*ident, "tag", "-a", tag, "-m", f"{message} {description}"], cwd=work)
            head = self._git(["rev-parse", "HEAD"], cwd=work).strip()
            # One push of branch + tag: git updates both refs or neither.
            with_retries(lambda: self._git(["push", "-q", "--atomic", "origin", *refs], cwd=work),
                         "git push", retries=self.retries, backoff=self.backoff, retry_on=(_GitError,))
            return head
        except _GitError as e:
            raise PublishError(f"cannot push to openxlab:{repo} after {self.retries} tries ({_first(e.stderr)}); "
                               "nothing was published (the push is atomic)") from e
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def move_tag(self, repo: str, tag: str, commit: str) -> None:
        work = self._workdir(repo)
        try:
            self._git(["fetch", "-q", "--depth", "1", "origin", "main"], cwd=work)
            self._git(["push", "-q", "-f", "origin", f"{commit}:refs/tags/{tag}"], cwd=work)
        except _GitError as e:
            raise PublishError(f"cannot move tag {tag} on openxlab:{repo} ({_first(e.stderr)}); "
                               "the version itself was published") from e
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def download(self, repo: str, revision: str | None, dest: Path, files: Callable[[str], list[str]]) -> str:
        work = Path(tempfile.mkdtemp(prefix="adapterhub-oxl-pull-"))
        src = f"openxlab:{repo}@{revision or 'main'}"
        try:
            args = ["clone", "-q", "--depth", "1"] + (["--branch", revision] if revision else []) + [
                self.url(repo), str(work / "r")]
            try:
                with_retries(lambda: self._git(args), "git clone", retries=self.retries, backoff=self.backoff,
                             retry_on=(_GitError,))
                self._git(["lfs", "pull"], cwd=work / "r")
            except _GitError as e:
                raise PublishError(f"cannot clone {src} ({_first(e.stderr)})") from e
            manifest = work / "r" / MANIFEST
            if not manifest.exists():
                raise PublishError(f"{src} has no {MANIFEST}: it was not published by adapterhub")
            shutil.copyfile(manifest, dest / MANIFEST)
            for rel in files(manifest.read_text()):
                if (work / "r" / rel).is_file():  # a missing file is reported by the manifest check
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(work / "r" / rel, dest / rel)
            return src
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _first(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"
