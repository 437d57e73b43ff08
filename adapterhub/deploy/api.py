"""The deploy entry points the CLI calls (the Ray Serve app is started by Ray from its import path)."""

from __future__ import annotations

from adapterhub.deploy.openxlab.generate import generate_openxlab_app

__all__ = ["generate_openxlab_app"]
