"""``adapterhub eval REF``: load base + adapter from the registry, score identity and retention,
and store the scores as the version's metrics."""

from __future__ import annotations

from typing import Any

from adapterhub.errors import ConfigError
from adapterhub.models import resolve_model
from adapterhub.registry import Registry
from adapterhub.settings import Settings
from training.evaluate import evaluate_identity
from training.replay import retention_reference


def evaluate_ref(registry: Registry, settings: Settings, ref: str, *, name: str | None = None,
                 author: str | None = None) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = registry.resolve(ref)
    manifest = registry.verify(record)
    identity = ((manifest.training or {}).get("config") or {}).get("eval", {}).get("identity") or {}
    if name:
        identity = {"name": name, "author": author or identity.get("author", "")}
    if not identity.get("name"):
        raise ConfigError(f"{record.ref} records no identity to check: pass --name (and --author)")
    if manifest.base_model is None:
        raise ConfigError(f"{record.ref} records no base model")
    base = resolve_model(manifest.base_model.id, settings)
    tok = AutoTokenizer.from_pretrained(str(base.path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    template = manifest.chat_template or tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(str(base.path), dtype=torch.bfloat16)
    base_general = retention_reference(model, tok, template, settings.cache_dir, base.fingerprint)
    model = PeftModel.from_pretrained(model, str(record.path))
    scores = evaluate_identity(model, tok, template, identity, base_general)
    registry.add_metrics(record.ref, {"identity": scores["identity"], "retention": scores["retention"]})
    return scores
