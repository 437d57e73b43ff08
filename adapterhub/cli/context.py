"""What a command works on: the registry that the settings (``ADAPTERHUB_*``) name. Commands open it
here and pass it to the one library function they call; a command of several steps (the demo) opens it
once and passes it to each. Nothing is cached across calls: tests run commands in one process with
different homes."""

from __future__ import annotations

from adapterhub.registry import Registry
from adapterhub.settings import Settings


def open_registry(settings: Settings | None = None) -> Registry:
    """The registry of ``settings`` (default: read from the environment now)."""
    return Registry.open(settings or Settings())
