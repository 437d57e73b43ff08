"""``adapterhub chat``: talk to a base, merged model or adapter in the terminal."""

from __future__ import annotations

import sys

import typer


def chat_cmd(
    model: str = typer.Argument("smollm2-135m-instruct", help="Base model, or a merged model ref in the registry."),
    adapter: str = typer.Option(None, "--adapter", "-a", help="Adapter ref to apply, e.g. lumen@production."),
    bits: int = typer.Option(None, "--bits", help="Load the base in 4 or 8 bit (bitsandbytes)."),
    system: str = typer.Option(None, "--system", help="System prompt."),
    template: str = typer.Option(None, "--template", help="Named chat template (default: the adapter's, then the base's)."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Answer length limit."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
) -> None:
    """Multi-turn terminal chat with streamed answers (/reset, /exit)."""
    from adapterhub.errors import AdapterHubError, IncompatibleAdapterError, MissingDependencyError
    from adapterhub.models import resolve_model
    from adapterhub.registry import Registry
    from adapterhub.settings import Settings
    from adapterhub.templates import get_template

    try:
        from serving.adapters import compatibility_problems
        from serving.chat import run_chat
        from serving.engines.hf import HFEngine
    except ImportError as e:
        raise MissingDependencyError(e.name or "torch", "serve", "adapterhub chat") from e
    settings = Settings()
    registry = Registry.open(settings)
    try:
        base = resolve_model(model, settings)
        path, model_id, fp = base.path, base.id, base.fingerprint
    except AdapterHubError:
        try:
            rec = registry.resolve(model)
        except (AdapterHubError, ValueError):
            raise AdapterHubError(f"'{model}' is neither a base model nor a model in the registry") from None
        path, model_id, fp = rec.path, rec.ref, None
    engine = HFEngine(path, model_id=model_id, fingerprint=fp, bits=bits, max_loaded=1, max_lora_rank=256)
    chat_template = get_template(template) if template else None
    key = None
    label = model_id
    if adapter:
        rec = registry.resolve(adapter)
        manifest = registry.verify(rec)
        problems = compatibility_problems(manifest.model_dump(), rec.path, engine)
        if problems:
            raise IncompatibleAdapterError(f"adapter {rec.ref} cannot run on {model_id}", problems)
        engine.load_adapter(rec.ref, rec.path)
        key, label = rec.ref, f"{model_id} + {rec.ref}"
        chat_template = chat_template or manifest.chat_template
    engine.start()
    try:
        run_chat(engine, adapter_key=key, template=chat_template, system=system, max_tokens=max_tokens,
                 temperature=temperature, stdin=sys.stdin, stdout=sys.stdout, label=label)
    finally:
        engine.stop()


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_cmd)
