"""``adapterhub eval REF``: a registry version on its pinned base, scored for identity and retention;
the scores are stored as the version's metrics."""

from __future__ import annotations

from typing import Any

from adapterhub.errors import ConfigError
from adapterhub.evaluation.identity import evaluate_identity
from adapterhub.evaluation.reference import retention_reference
from adapterhub.loading.versions import open_version
from adapterhub.precision import torch_dtype
from adapterhub.registry import Registry
from adapterhub.settings import Settings


def evaluate_version(registry: Registry, settings: Settings, ref: str, *, name: str | None = None,
                     author: str | None = None) -> dict[str, Any]:
    """Identity and retention of ``ref`` (an adapter) on its recorded base; stores them as metrics.

    Raises:
        IncompatibleAdapterError: the recorded base resolves to another architecture (as ``serve`` does).
        ConfigError: no identity to check (none recorded and no ``name`` given).
    """
    opened = open_version(registry, ref, kind="adapter", settings=settings)
    assert opened.base is not None
    opened.require_compatible(opened.base.id)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest, base = opened.manifest, opened.base
    identity = ((manifest.training or {}).get("config") or {}).get("eval", {}).get("identity") or {}
    if name:
        identity = {"name": name, "author": author or identity.get("author", "")}
    if not identity.get("name"):
        raise ConfigError(f"{opened.ref} records no identity to check: pass --name (and --author)")
    tok = AutoTokenizer.from_pretrained(str(base.path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    template = opened.template or tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(str(base.path), dtype=torch_dtype("bf16"))
    base_general = retention_reference(model, tok, template, settings.cache_dir, base.fingerprint)
    model = PeftModel.from_pretrained(model, str(opened.path))
    scores = evaluate_identity(model, tok, template, identity, base_general)
    registry.add_metrics(opened.ref, {"identity": scores["identity"], "retention": scores["retention"]})
    return scores
