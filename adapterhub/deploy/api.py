"""The deploy entry points the CLI calls (the Ray Serve app is started by Ray from its import path)."""

from __future__ import annotations

from typing import Any

from adapterhub.deploy.openxlab.generate import generate_openxlab_app
from adapterhub.serving.config import ServeConfig

__all__ = ["generate_openxlab_app", "serve_on_ray"]


def serve_on_ray(config: ServeConfig, home: str | None, announce: Any) -> None:
    """``adapterhub serve --ray``: the server on Ray Serve (needs the ``scale`` extra)."""
    from adapterhub.errors import MissingDependencyError

    try:
        from adapterhub.deploy.ray.app import serve_on_ray as run
    except ImportError as e:
        raise MissingDependencyError("ray[serve]", "scale", "serve --ray") from e
    run(config, home, announce)
