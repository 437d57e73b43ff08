"""The export composition root: what the CLI calls to merge a version into a standalone model."""

from __future__ import annotations

from adapterhub.export.merge import MergeResult, ParityError, merge

__all__ = ["MergeResult", "ParityError", "merge"]
