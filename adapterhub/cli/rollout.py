"""``adapterhub promote``, ``rollback``, ``gate`` and ``stats``: moving versions to production safely."""

from __future__ import annotations

import typer

from adapterhub.cli.context import open_registry


def promote_cmd(
    ref: str = typer.Argument(..., help="Version to promote, e.g. lumen@4."),
    alias: str = typer.Argument(..., help="Alias to move, e.g. production."),
    require: list[str] = typer.Option([], "--require", "-r", help="METRIC>=VALUE, e.g. identity>=0.95 (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Move the alias even if a requirement is missed (recorded)."),
) -> None:
    """Point ALIAS at REF if its metrics meet --require and the alias's gate; otherwise change nothing."""
    record, prev, overridden = open_registry().promote(ref, alias, require=require, force=force)
    was = f" (was {record.name}@{prev})" if prev else ""
    typer.echo(f"{record.name}@{alias} -> {record.ref}{was}")
    if overridden:
        typer.echo("forced past: " + "; ".join(overridden))


def rollback_cmd(name: str = typer.Argument(...), alias: str = typer.Argument(...)) -> None:
    """Point ALIAS back at its previous target (plain or split)."""
    ev = open_registry().rollback(name, alias)
    target = ",".join(f"{v}={w}" for v, w in sorted(ev.split.items())) if ev.split else f"{name}@{ev.version}"
    typer.echo(f"{name}@{alias} -> {target} ({ev.note})")


def gate_cmd(
    name: str = typer.Argument(...), alias: str = typer.Argument(...),
    require: list[str] = typer.Option([], "--require", "-r", help="METRIC>=VALUE every promotion must meet."),
    clear: bool = typer.Option(False, "--clear", help="Remove the gate."),
) -> None:
    """Show, set or clear the requirements every promotion to ALIAS must meet."""
    reg = open_registry()
    if clear or require:
        reg.set_gate(name, alias, None if clear else require)
    gate = reg.gate(name, alias)
    typer.echo(f"{name}@{alias} gate: {', '.join(gate) if gate else 'none'}")


def stats_cmd(url: str = typer.Option("http://127.0.0.1:8000", "--url", help="A running adapterhub server.")) -> None:
    """Per-version traffic, latency and residency from a server's /metrics."""
    from rich.console import Console
    from rich.table import Table

    from adapterhub.stats import fetch_stats

    rows = fetch_stats(url)
    table = Table("name", "version", "requests", "errors", "tokens in", "tokens out", "ttft p50 s", "itl p50 ms",
                  "resident", "split share")
    for r in rows:
        table.add_row(r.name, r.version, str(r.requests), str(r.errors), str(r.prompt_tokens), str(r.completion_tokens),
                      _num(r.ttft_p50), _num(r.itl_p50 * 1000 if r.itl_p50 is not None else None), r.resident,
                      r.split_share)
    Console(width=160).print(table)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def register(app: typer.Typer) -> None:
    app.command("promote")(promote_cmd)
    app.command("rollback")(rollback_cmd)
    app.command("gate")(gate_cmd)
    app.command("stats")(stats_cmd)
