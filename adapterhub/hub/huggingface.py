"""The Hugging Face Hub transport, over ``huggingface_hub.HfApi``.

One commit per version (all files + README.md model card), then the tag ``v<version>``. The token comes
from ``HF_TOKEN`` or the local HF login and is never logged. Transient failures (5xx, connection
errors) are retried; every other failure becomes one PublishError saying what was published.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from adapterhub.errors import MissingDependencyError, PublishError
from adapterhub.hub.transport import HubTransport, with_retries
from adapterhub.registry.manifest import MANIFEST

_NOTHING = "Nothing was published (commits are atomic): run the same push again."
_UNTAGGED = "The files were committed but not tagged: run the same push again to add the tag."


def _hf() -> Any:
    try:
        import huggingface_hub
    except ImportError as e:
        raise MissingDependencyError("huggingface_hub", "hf", "publishing to the Hugging Face Hub") from e
    return huggingface_hub


class _ServerError(Exception):
    pass


class HuggingFaceTransport(HubTransport):
    scheme = "hf"

    def __init__(self, *, endpoint: str | None = None, token: str | None = None, retries: int = 3,
                 backoff: float = 1.0) -> None:
        hf = _hf()
        self.endpoint = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        self.token = token or os.environ.get("HF_TOKEN") or hf.get_token()
        self.retries, self.backoff = retries, backoff
        self.api = hf.HfApi(endpoint=self.endpoint, token=self.token)

    def url(self, repo: str) -> str:
        return f"{self.endpoint}/{repo}"

    def ready_to_push(self) -> None:
        if not self.token:
            raise PublishError("no Hugging Face token: set HF_TOKEN or run 'hf auth login' (nothing was published)")

    # ---------------------------------------------------------------- calls
    def _network_errors(self) -> tuple[type[BaseException], ...]:
        errors: list[type[BaseException]] = [ConnectionError, TimeoutError, _ServerError]
        for mod in ("httpx2", "httpx"):  # huggingface_hub 2.x uses httpx2, 1.x httpx
            try:
                errors.append(__import__(mod).TransportError)
            except (ImportError, AttributeError):
                pass
        return tuple(errors)

    def _retried(self, fn: Callable[[], Any], what: str) -> Any:
        from huggingface_hub.errors import HfHubHTTPError

        def guarded() -> Any:
            try:
                return fn()
            except HfHubHTTPError as e:
                status = getattr(e.response, "status_code", None)
                if status is not None and status >= 500:
                    raise _ServerError(f"{what}: HTTP {status}") from e
                raise
        return with_retries(guarded, what, retries=self.retries, backoff=self.backoff,
                            retry_on=self._network_errors())

    def _push_call(self, fn: Callable[[], Any], repo: str, step: str, note: str = _NOTHING) -> Any:
        """A push step: errors become one PublishError naming the step and what was published."""
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

        try:
            return self._retried(fn, step)
        except RepositoryNotFoundError as e:
            raise PublishError(f"cannot {step} on {repo}: repository not found or no access "
                               "(nothing was published)") from e
        except HfHubHTTPError as e:
            status = getattr(e.response, "status_code", "?")
            raise PublishError(f"cannot {step} on {repo}: HTTP {status} ({_short(e)}). {note}") from e
        except (OSError, _ServerError) as e:
            raise PublishError(f"cannot {step} on {repo} after {self.retries} tries ({type(e).__name__}). "
                               f"{note}") from e

    # ---------------------------------------------------------------- seam
    def open_repo(self, repo: str, *, private: bool) -> None:
        self._push_call(lambda: self.api.create_repo(repo, private=private, exist_ok=True), repo,
                        "create the repository")

    def _refs(self, repo: str) -> Any:
        return self._push_call(lambda: self.api.list_repo_refs(repo), repo, "list tags")

    def tag_commit(self, repo: str, tag: str) -> str | None:
        return next((str(t.target_commit) for t in self._refs(repo).tags if t.name == tag), None)

    def head_commit(self, repo: str) -> str | None:
        return next((str(b.target_commit) for b in self._refs(repo).branches if b.name == "main"), None)

    def manifest_at(self, repo: str, revision: str) -> str | None:
        from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

        with tempfile.TemporaryDirectory(prefix="adapterhub-hf-") as cache:
            try:
                path = self._push_call(lambda: self.api.hf_hub_download(repo, MANIFEST, revision=revision,
                                                                        cache_dir=cache), repo, "read the manifest")
            except (EntryNotFoundError, RevisionNotFoundError):
                return None
            except PublishError as e:
                if isinstance(e.__cause__, (EntryNotFoundError, RevisionNotFoundError)):
                    return None
                raise
            return Path(path).read_text()

    def publish(self, repo: str, folder: Path, *, tag: str, message: str, description: str,
                commit: str | None = None) -> str:
        if commit is None:
            info = self._push_call(lambda: self.api.upload_folder(
                repo_id=repo, folder_path=str(folder), commit_message=message, commit_description=description),
                repo, "upload the files")
            commit = str(info.oid)
        self._push_call(lambda: self.api.create_tag(repo, tag=tag, revision=commit, tag_message=description),
                        repo, f"create tag {tag} (the files are on main as commit {commit[:12]})", _UNTAGGED)
        return commit

    def move_tag(self, repo: str, tag: str, commit: str) -> None:
        if self.tag_commit(repo, tag) is not None:
            self._push_call(lambda: self.api.delete_tag(repo, tag=tag), repo, f"move tag {tag}", "")
        self._push_call(lambda: self.api.create_tag(repo, tag=tag, revision=commit), repo, f"tag {tag}", "")

    def download(self, repo: str, revision: str | None, dest: Path, files: Callable[[str], list[str]]) -> str:
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        rev = revision or "main"
        cache = Path(tempfile.mkdtemp(prefix="adapterhub-hf-pull-"))
        try:
            mpath = self._retried(lambda: self.api.hf_hub_download(repo, MANIFEST, revision=rev,
                                                                   cache_dir=str(cache)), "download manifest")
            shutil.copyfile(mpath, dest / MANIFEST)
            for rel in files(Path(mpath).read_text()):
                p = self._retried(partial(self.api.hf_hub_download, repo, rel, revision=rev, cache_dir=str(cache)),
                                  f"download {rel}")
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dest / rel)
        except RepositoryNotFoundError as e:
            raise PublishError(f"hf:{repo} not found (or private without a token)") from e
        except RevisionNotFoundError as e:
            raise PublishError(f"hf:{repo} has no revision or tag '{rev}'") from e
        except EntryNotFoundError as e:
            raise PublishError(f"hf:{repo}@{rev} has no {MANIFEST}: it was not published by adapterhub") from e
        except HfHubHTTPError as e:
            raise PublishError(f"cannot pull hf:{repo}@{rev}: {_short(e)}") from e
        except (OSError, _ServerError) as e:
            raise PublishError(f"cannot pull hf:{repo}@{rev} ({type(e).__name__}); nothing was registered") from e
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        return f"hf:{repo}@{rev}"


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:200]
