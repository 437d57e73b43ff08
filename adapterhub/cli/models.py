"""``adapterhub models pull-demo|list|show``."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from adapterhub.loading.bases import pull_demo, resolve_base
from adapterhub.models import DEMO_MODEL, list_local_models
from adapterhub.settings import Settings

models_app = typer.Typer(help="Base models: the built-in demo model, local dirs, GGUF files, hub ids.",
                         no_args_is_help=True)


@models_app.command("pull-demo")
def pull_demo_cmd() -> None:
    """Download and convert the built-in demo model (SmolLM2-135M-Instruct) once."""
    settings = Settings()
    with Console(stderr=True).status(f"pulling {DEMO_MODEL} (download + one-time conversion)…"):
        m = pull_demo(settings)
    typer.echo(f"{m.id} ready at {m.path}")


@models_app.command("list")
def list_cmd() -> None:
    """Models available locally."""
    rows = list_local_models(Settings())
    table = Table("model", "kind", "fingerprint", "path")
    for m in rows:
        table.add_row(m.path.name, m.kind, m.fingerprint, str(m.path))
    Console().print(table)
    if not rows:
        typer.echo(f"no local models yet: run 'adapterhub models pull-demo' to get {DEMO_MODEL}")


@models_app.command("show")
def show_cmd(model: str = typer.Argument(..., help="Demo name, local dir, .gguf file, hub id or a vision "
                                                     "bundle ref (NAME@VER).")) -> None:
    """Resolve a model spec and print what adapters would pin."""
    m = resolve_base(model, Settings())
    typer.echo(f"id: {m.id}\nkind: {m.kind}\npath: {m.path}\nrevision: {m.revision}\nfingerprint: {m.fingerprint}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
