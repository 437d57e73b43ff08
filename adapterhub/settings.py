"""Process-wide settings from the environment (prefix ``ADAPTERHUB_``).

Only paths and switches live here; nothing is created on import.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Settings read from ``ADAPTERHUB_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="ADAPTERHUB_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.home() / ".adapterhub",
        description="Root of the registry, pulled models and caches (ADAPTERHUB_HOME).",
    )
    debug: bool = Field(False, description="Show full tracebacks in the CLI (ADAPTERHUB_DEBUG=1).")
    actor: str | None = Field(
        None, description="Who is recorded as moving an alias; defaults to the OS user."
    )

    @property
    def registry_dir(self) -> Path:
        return self.home / "registry"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"
