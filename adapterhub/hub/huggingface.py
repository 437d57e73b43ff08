"""Publish to / pull from the Hugging Face Hub with ``huggingface_hub.HfApi``.

One commit per version (all files + README.md model card), then tag ``v<version>``. Idempotent: if the
tag exists and its manifest has the same content hash, nothing is uploaded; if ``main`` already holds
this content (a push that died between commit and tag) only the tag is created. The token comes from
``HF_TOKEN`` or the local HF login and is never logged.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from adapterhub.errors import MissingDependencyError, PublishError
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

log = logging.getLogger(__name__)


def _hf() -> Any:
    try:
        import huggingface_hub
    except ImportError as e:
        raise MissingDependencyError("huggingface_hub", "hf", "publishing to the Hugging Face Hub") from e
    return huggingface_hub


class HuggingFacePublisher(Publisher):
    scheme = "hf"

    def __init__(self, *, endpoint: str | None = None, token: str | None = None, retries: int = 3,
                 backoff: float = 1.0) -> None:
        hf = _hf()
        self.endpoint = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        self.token = token or os.environ.get("HF_TOKEN") or hf.get_token()
        self.retries, self.backoff = retries, backoff
        self.api = hf.HfApi(endpoint=self.endpoint, token=self.token)

    def _need_token(self) -> None:
        if not self.token:
            raise PublishError("no Hugging Face token: set HF_TOKEN or run 'hf auth login' (nothing was published)")

    def _network_errors(self) -> tuple[type[BaseException], ...]:
        errors: list[type[BaseException]] = [ConnectionError, TimeoutError, _ServerError]
        for mod in ("httpx2", "httpx"):  # huggingface_hub 2.x uses httpx2, 1.x httpx
            try:
                errors.append(__import__(mod).TransportError)
            except (ImportError, AttributeError):
                pass
        return tuple(errors)

    def _call(self, fn: Any, what: str) -> Any:
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

    def _tag_hash(self, repo: str, revision: str) -> str | None:
        from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

        with tempfile.TemporaryDirectory(prefix="adapterhub-hf-") as cache:
            try:
                path = self._call(lambda: self.api.hf_hub_download(repo, MANIFEST, revision=revision, cache_dir=cache),
                                  "read manifest")
            except (EntryNotFoundError, RevisionNotFoundError):
                return None
            return published_hash(Path(path).read_text())

    def push(self, registry: Registry, ref: str, repo: str, *, private: bool = False,
             alias_tags: bool = False) -> PushResult:
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

        self._need_token()
        record, manifest, folder = stage_version(registry, ref, repo)
        tag = f"v{record.version}"
        url = f"{self.endpoint}/{repo}"
        step = "create the repository"
        try:
            self._call(lambda: self.api.create_repo(repo, private=private, exist_ok=True), step)
            refs = self._call(lambda: self.api.list_repo_refs(repo), "list tags")
            tags = {t.name: t.target_commit for t in refs.tags}
            if tag in tags:
                if self._tag_hash(repo, tag) == record.content_hash:
                    return PushResult(repo, tag, tags[tag], url, created=False)
                raise PublishError(f"{repo} already has tag {tag} with different content: nothing was published; "
                                   "push to another repository or remove the tag")
            step = "upload the files"
            if self._tag_hash(repo, "main") == record.content_hash:
                commit = next(b.target_commit for b in refs.branches if b.name == "main")
                log.info("main already holds %s (an earlier push stopped before tagging)", record.ref)
            else:
                info = self._call(lambda: self.api.upload_folder(
                    repo_id=repo, folder_path=str(folder), commit_message=f"adapterhub: {record.ref}",
                    commit_description=f"content sha256:{record.content_hash}"), step)
                commit = info.oid
            step = f"create tag {tag} (the files are on main as commit {str(commit)[:12]})"
            self._call(lambda: self.api.create_tag(repo, tag=tag, revision=commit,
                                                   tag_message=f"{record.ref} sha256:{record.content_hash}"), step)
            if alias_tags:
                for alias in record.aliases:
                    if alias in tags:
                        self._call(lambda a=alias: self.api.delete_tag(repo, tag=a), f"move tag {alias}")
                    self._call(lambda a=alias: self.api.create_tag(repo, tag=a, revision=commit), f"tag {alias}")
        except PublishError:
            raise
        except RepositoryNotFoundError as e:
            raise PublishError(f"cannot {step} on {repo}: repository not found or no access (nothing was published)") from e
        except HfHubHTTPError as e:
            status = getattr(e.response, "status_code", "?")
            raise PublishError(f"cannot {step} on {repo}: HTTP {status} ({_short(e)}). "
                               f"{_what_was_published(step)}") from e
        except (OSError, _ServerError) as e:
            raise PublishError(f"cannot {step} on {repo} after {self.retries} tries ({type(e).__name__}). "
                               f"{_what_was_published(step)}") from e
        finally:
            shutil.rmtree(folder.parent, ignore_errors=True)
        return PushResult(repo, tag, commit, url, created=True)

    def pull(self, registry: Registry, repo: str, revision: str | None, name: str) -> tuple[VersionRecord, bool]:
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        rev = revision or "main"
        tmp = Path(tempfile.mkdtemp(prefix="adapterhub-hf-pull-"))
        try:
            mpath = self._call(lambda: self.api.hf_hub_download(repo, MANIFEST, revision=rev, cache_dir=str(tmp / "c")),
                               "download manifest")
            from adapterhub.registry import Manifest

            manifest = Manifest.model_validate_json(Path(mpath).read_text())
            folder = tmp / "files"
            folder.mkdir()
            shutil.copyfile(mpath, folder / MANIFEST)
            for rel in manifest.files:
                p = self._call(lambda r=rel: self.api.hf_hub_download(repo, r, revision=rev, cache_dir=str(tmp / "c")),
                               f"download {rel}")
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, folder / rel)
            return register_pulled(registry, folder, name, f"hf:{repo}@{rev}")
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
            shutil.rmtree(tmp, ignore_errors=True)


class _ServerError(Exception):
    pass


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:200]


def _what_was_published(step: str) -> str:
    if step.startswith("create tag"):
        return "The files were committed but not tagged: run the same push again to add the tag."
    return "Nothing was published (commits are atomic): run the same push again."
