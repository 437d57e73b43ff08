"""``adapterhub keys create|list|update|revoke|usage|history``: tenants' API keys in the registry's database
(every server on a shared registry sees them; ``adapterhub serve --auth keys`` enforces them)."""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.table import Table

from adapterhub.cli.context import open_registry

keys_app = typer.Typer(help="API keys scoped to adapter names, with rate limits, usage and revocation.",
                       no_args_is_help=True)


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))


@keys_app.command("create")
def create_cmd(
    name: str = typer.Argument(..., help="The key's name (shown in usage, metrics and history)."),
    models: list[str] = typer.Option([], "--models", "-m", help="Adapter names or globs the key may use "
                                     "(repeatable; 'team-a-*'; '*' for all; the base model by its served name)."),
    rpm: int = typer.Option(None, "--rpm", help="Generation requests per minute (sliding window)."),
    tpm: int = typer.Option(None, "--tpm", help="Prompt + completion tokens per minute (sliding window)."),
    expires_days: float = typer.Option(None, "--expires-days", help="Expire after this many days."),
    admin: bool = typer.Option(False, "--admin", help="Also allow the admin routes (load, unload, /metrics)."),
) -> None:
    """Create a key; its secret is printed once, as the last line (only a hash is stored)."""
    record, secret = open_registry().keys.create(name, models, rpm=rpm, tpm=tpm, expires_days=expires_days,
                                                 admin=admin)
    limits = ", ".join(f"{n} {v}" for n, v in (("rpm", record.rpm), ("tpm", record.tpm)) if v) or "no limits"
    typer.echo(f"created key '{record.name}': models {', '.join(record.models)}; {limits}"
               f"{'; admin' if record.admin else ''}; expires {_when(record.expires_at)}")
    typer.echo("the secret is shown only now; send it as 'Authorization: Bearer <secret>':", err=True)
    typer.echo(secret)


@keys_app.command("list")
def list_cmd() -> None:
    """Keys with their scopes, limits, state, creation and last use (never secrets)."""
    table = Table("name", "models", "rpm", "tpm", "admin", "state", "created", "expires", "last used")
    for k in open_registry().keys.list():
        table.add_row(k.name, ",".join(k.models), str(k.rpm or "-"), str(k.tpm or "-"), "yes" if k.admin else "",
                      k.state(), _when(k.created_at), _when(k.expires_at), _when(k.last_used_at))
    Console(width=160).print(table)


@keys_app.command("update")
def update_cmd(
    name: str = typer.Argument(...),
    models: list[str] = typer.Option([], "--models", "-m", help="Replace the scope with these globs."),
    rpm: int = typer.Option(None, "--rpm", help="New requests-per-minute limit."),
    tpm: int = typer.Option(None, "--tpm", help="New tokens-per-minute limit."),
    no_limits: bool = typer.Option(False, "--no-limits", help="Remove both limits."),
) -> None:
    """Change a key's scope or limits (every server applies it within a second)."""
    k = open_registry().keys.update(name, models=models, rpm=rpm, tpm=tpm, no_limits=no_limits)
    typer.echo(f"key '{k.name}': models {', '.join(k.models)}; rpm {k.rpm or '-'}, tpm {k.tpm or '-'}")


@keys_app.command("revoke")
def revoke_cmd(name: str = typer.Argument(...)) -> None:
    """Revoke a key (every server refuses it within a second)."""
    k = open_registry().keys.revoke(name)
    typer.echo(f"revoked key '{k.name}'")


@keys_app.command("usage")
def usage_cmd(name: str = typer.Argument(None, help="Only this key.")) -> None:
    """Requests and tokens per key and version, by UTC day (the chargeback view)."""
    table = Table("day", "key", "model", "requests", "prompt tokens", "completion tokens")
    for u in open_registry().keys.usage(name):
        table.add_row(u.day, u.key, u.model, str(u.requests), str(u.prompt_tokens), str(u.completion_tokens))
    Console(width=160).print(table)


@keys_app.command("history")
def history_cmd(name: str = typer.Argument(None, help="Only this key.")) -> None:
    """Key creations, changes, revocations and uses of admin keys."""
    for e in open_registry().keys.history(name):
        typer.echo(f"{_when(e.at)}  {e.key:<20} {e.action:<10} by {e.by}" + (f"  {e.detail}" if e.detail else ""))


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
