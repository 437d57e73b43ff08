"""The training composition root: what the CLI and the demo call.

* :func:`train_and_register` — load a config (file or built-in, with overrides), train, register the
  result as the next version and point aliases at it;
* :func:`list_configs`, :func:`copy_config` — the built-in training and DeepSpeed configs.

Everything that needs no model (the config, the data file and its columns) is checked before a model
is loaded.
"""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path
from typing import Any

from adapterhub.errors import ConfigError, MissingDependencyError
from adapterhub.registry import Registry
from adapterhub.settings import Settings
from adapterhub.training.builtin_data import shapes_folder
from adapterhub.training.config import TrainConfig, builtin_configs, load_config
from adapterhub.training.deepspeed import DS_DIR

__all__ = ["copy_config", "list_configs", "shapes_folder", "train_and_register"]


def train_and_register(config: str | TrainConfig, overrides: list[str] | None = None, *, name: str | None = None,
                       deepspeed: str | None = None, output: Path | None = None, resume: bool = False,
                       register: bool = True, aliases: list[str] | None = None, settings: Settings | None = None,
                       console: Any = None, registry: Registry | None = None) -> Any:
    """Train ``config``; returns the :class:`adapterhub.training.stages.TrainResult` (its ``record`` is the new
    version). The registry (``registry``, or the one ``settings`` names) is opened here, once, and used by
    every stage: a bundle base, a parent adapter, the registration and the aliases."""
    cfg = config if isinstance(config, TrainConfig) else load_config(
        config, overrides or [], name=name, **{"train.deepspeed": deepspeed})
    try:
        from adapterhub.training.run import train
    except ImportError as e:
        raise MissingDependencyError(e.name or "torch", "train", "adapterhub train") from e
    settings = settings or Settings()
    registry = registry or Registry.open(settings)
    result = train(cfg, settings, output=output, resume=resume, register=register, console=console,
                   registry=registry)
    if result.record is not None and aliases:
        for alias in aliases:
            result.record, _ = registry.set_alias(result.record.ref, alias)
    return result


def list_configs(pattern: str | None = None) -> list[str]:
    """Built-in config names (``deepspeed/…`` for the ZeRO configs), filtered by a glob or substring."""
    names = list(builtin_configs()) + [f"deepspeed/{p.stem}" for p in sorted(DS_DIR.glob("*.json"))]
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern) or pattern in n]


def copy_config(name: str, dest: Path) -> Path:
    """Copy a built-in config to ``dest`` (a file or a directory) to edit it; never overwrites."""
    if name.startswith("deepspeed/"):
        src = DS_DIR / f"{name.split('/', 1)[1]}.json"
    else:
        src = builtin_configs().get(name.removesuffix(".yaml"), Path("/nonexistent"))
    if not src.exists():
        raise ConfigError(f"no built-in config '{name}' (see 'adapterhub list-cfg')")
    target = dest / src.name if dest.is_dir() else dest
    if target.exists():
        raise ConfigError(f"{target} exists: not overwriting")
    shutil.copyfile(src, target)
    return target
