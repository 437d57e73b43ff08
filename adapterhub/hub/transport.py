"""The hub seam: the few remote operations a hub offers. The push/pull algorithm over it is
:mod:`adapterhub.hub.sync`, written once for every hub.

Each transport turns its own failures into :class:`~adapterhub.errors.PublishError` whose message says
what, if anything, was published.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class HubTransport(abc.ABC):
    """Remote storage of published versions: files on a branch, one tag per version."""

    scheme: str = ""

    def url(self, repo: str) -> str:
        """Where a person finds ``repo``."""
        return repo

    def ready_to_push(self) -> None:
        """Raise PublishError when pushing cannot work (no token, no git-lfs…), before any remote call."""

    def ready_to_pull(self) -> None:
        """Raise PublishError when pulling cannot work."""

    @abc.abstractmethod
    def open_repo(self, repo: str, *, private: bool) -> None:
        """Make sure ``repo`` exists and can be written (create it where the hub allows)."""

    @abc.abstractmethod
    def manifest_at(self, repo: str, revision: str) -> str | None:
        """Text of ``adapterhub.json`` at a tag or branch; None when the revision or the file is missing."""

    @abc.abstractmethod
    def tag_commit(self, repo: str, tag: str) -> str | None:
        """The commit ``tag`` points to (None if there is no such tag)."""

    @abc.abstractmethod
    def head_commit(self, repo: str) -> str | None:
        """The commit of the main branch (None for an empty repository)."""

    @abc.abstractmethod
    def publish(self, repo: str, folder: Path, *, tag: str, message: str, description: str,
                commit: str | None = None) -> str:
        """Commit ``folder`` as the branch's whole content and tag that commit ``tag``; returns the commit.

        With ``commit`` given, the files are already there (an earlier push stopped before tagging):
        only the tag is created.
        """

    @abc.abstractmethod
    def move_tag(self, repo: str, tag: str, commit: str) -> None:
        """Point a (mutable) tag such as ``production`` at ``commit``."""

    @abc.abstractmethod
    def download(self, repo: str, revision: str | None, dest: Path, files: Callable[[str], list[str]]) -> str:
        """Fetch ``adapterhub.json`` and the files it lists into ``dest``; returns the source label.

        ``files(manifest_text)`` returns the relative paths to fetch.
        """


def with_retries(fn: Callable[[], T], what: str, *, retries: int, backoff: float,
                 retry_on: tuple[type[BaseException], ...]) -> T:
    """Call ``fn``; retry ``retries - 1`` times on ``retry_on`` with a growing pause."""
    for attempt in range(1, retries + 1):
        try:
            return fn()
        except retry_on as e:
            if attempt == retries:
                raise
            log.warning("%s failed (%s), retry %d/%d", what, type(e).__name__, attempt, retries - 1)
            time.sleep(backoff * attempt)
    raise AssertionError("unreachable")
