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
    registry_url: str | None = Field(
        None, description="PostgreSQL URL of a registry shared by many machines (ADAPTERHUB_REGISTRY_URL, "
                          "postgresql://user:pw@host/db); unset: the embedded SQLite registry under home.",
    )
    artifacts_url: str | None = Field(
        None, description="Object store for a shared registry's files (ADAPTERHUB_ARTIFACTS_URL, "
                          "s3://bucket/prefix; endpoint and keys from the AWS_* variables).",
    )
    cache_max_gb: float = Field(
        20.0, description="Size bound of this machine's cache of a shared registry's versions (LRU).", gt=0,
    )
    gc_grace_s: float = Field(
        3600.0, description="Uploads no version references are removed by gc after this many seconds.", ge=0,
    )

    @property
    def registry_dir(self) -> Path:
        return self.home / "registry"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def versions_cache_dir(self) -> Path:
        return self.home / "cache" / "versions"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"
