"""Turn an ImportError of an optional dependency into the error that names the extra to install."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from adapterhub.errors import MissingDependencyError


@contextmanager
def needs(extra: str, purpose: str) -> Iterator[None]:
    """``with needs("train", "adapterhub train"): from adapterhub.training.api import …``"""
    try:
        yield
    except ImportError as e:
        if isinstance(e, MissingDependencyError):
            raise
        raise MissingDependencyError(e.name or "torch", extra, purpose) from e
