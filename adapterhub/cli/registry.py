"""Registry commands: import, list, show, tag, untag, rm, export, verify, history; and
``registry info | gc | migrate`` for where the registry lives and its upkeep."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from adapterhub.cli.context import open_registry
from adapterhub.errors import AdapterHubError
from adapterhub.registry import Registry
from adapterhub.settings import Settings


def _registry() -> Registry:
    return open_registry()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def import_cmd(
    src: Path = typer.Argument(..., help="A PEFT LoRA directory (or a full model dir with --kind model)."),
    name: str = typer.Option(..., "--name", "-n", help="Registry name; the version is assigned."),
    base: str = typer.Option(None, "--base", help="Base model id; defaults to adapter_config.json's."),
    kind: str = typer.Option("adapter", "--kind", help="'adapter' or 'model'."),
    alias: list[str] = typer.Option([], "--alias", "-a", help="Also point these aliases at it."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept adapter_model.bin (converted)."),
) -> None:
    """Register a directory as a new immutable version."""
    from adapterhub.loading import import_version

    rec, created = import_version(_registry(), src, name, base=base, kind=kind, aliases=alias,
                                  allow_pickle=allow_pickle, settings=Settings())
    word = "registered" if created else "unchanged: same content as"
    typer.echo(f"{word} {rec.ref} (sha256:{rec.content_hash[:12]})")


def list_cmd(name: str = typer.Argument(None, help="Only this name.")) -> None:
    """Versions in the registry."""
    rows = _registry().list(name)
    table = Table("name", "version", "aliases", "kind", "base", "rank", "size", "created")
    for r in rows:
        table.add_row(r.name, str(r.version), ",".join(r.aliases), r.kind, r.base_model or "",
                      str(r.rank or ""), _size(r.size), time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at)))
    Console(width=160).print(table)


def show_cmd(ref: str, as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON.")) -> None:
    """A version's manifest: base, lineage, metrics, files."""
    reg = _registry()
    rec = reg.resolve(ref)
    m = reg.manifest(rec)
    data = m.model_dump(exclude_none=True)
    data["aliases"] = list(rec.aliases)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"{rec.ref}  sha256:{rec.content_hash}  aliases: {', '.join(rec.aliases) or '-'}")
    typer.echo(f"kind: {m.kind}   base: {m.base_model.id if m.base_model else '-'}   size: {_size(rec.size)}")
    if m.lora:
        typer.echo(f"lora: r={m.lora['r']} alpha={m.lora['alpha']} targets={','.join(m.lora['target_modules'])}")
    if m.training:
        keys = ("dataset_fingerprint", "final_loss", "steps", "wall_time_s", "method")
        typer.echo("training: " + ", ".join(f"{k}={m.training[k]}" for k in keys if k in m.training))
    if m.metrics:
        typer.echo("metrics: " + ", ".join(f"{k}={v}" for k, v in m.metrics.items()))
    for rel, e in m.files.items():
        typer.echo(f"  {rel}  {_size(e.size)}  {e.sha256[:12]}")


def tag_cmd(ref: str, alias: str,
            split: str = typer.Option(None, "--split", help="Weighted versions, e.g. 3=90,4=10 (REF is the name)."),
            force: bool = typer.Option(False, "--force", help="Move the alias even if a version misses the alias's "
                                       "gate (recorded in its history).")) -> None:
    """Point ALIAS (e.g. production) at REF, or split it over versions by weight."""
    if split:
        from adapterhub.registry.rollout import parse_split

        name = ref.split("@", 1)[0]
        weights, prev = _registry().set_split(name, alias, parse_split(split), force=force)
        total = sum(weights.values())
        shares = ", ".join(f"{name}@{v} {100 * w / total:.0f}%" for v, w in sorted(weights.items()))
        typer.echo(f"{name}@{alias} -> {shares}" + (f" (was {name}@{prev})" if prev else ""))
        return
    rec, prev = _registry().set_alias(ref, alias, force=force)
    moved = f" (was {rec.name}@{prev})" if prev and prev != rec.version else ""
    typer.echo(f"{rec.name}@{alias} -> {rec.ref}{moved}")


def untag_cmd(name: str, alias: str) -> None:
    """Remove ALIAS from NAME."""
    prev = _registry().remove_alias(name, alias)
    typer.echo(f"removed {name}@{alias} (was version {prev})")


def rm_cmd(ref: str, force: bool = typer.Option(False, "--force", help="Also if an alias points to it.")) -> None:
    """Delete a version."""
    rec = _registry().remove(ref, force=force)
    typer.echo(f"removed {rec.ref}")


def export_cmd(ref: str, dest: Path) -> None:
    """Copy a version's files (verified) to DEST."""
    out = _registry().export(ref, dest)
    typer.echo(f"exported {ref} to {out}")


def verify_cmd(
    ref: str = typer.Argument(None, help="One version; all when omitted."),
    remote: bool = typer.Option(None, "--remote/--local", help="Also download and re-hash the shared store's "
                                "objects (default on a shared registry), or check only this machine's copies."),
) -> None:
    """Re-check checksums of one or every version (a corrupt local copy of a shared version is fetched again)."""
    reg = _registry()
    records = [reg.resolve(ref)] if ref else reg.list()
    remote = reg.store.shared if remote is None else remote
    bad = 0
    for rec in records:
        try:
            reg.verify(rec, remote=remote)
            typer.echo(f"ok   {rec.ref}")
        except AdapterHubError as e:
            bad += 1
            typer.echo(f"BAD  {e.message}")
    if bad:
        raise typer.Exit(3)


def history_cmd(name: str) -> None:
    """Who moved which alias when."""
    for ev in _registry().alias_history(name):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev.at))
        if ev.split:
            target = "-> " + ",".join(f"{v}={w}" for v, w in sorted(ev.split.items()))
        else:
            target = f"-> {ev.version}" if ev.version is not None else "removed"
        typer.echo(f"{when}  {ev.by}  {ev.name}@{ev.alias} {target}" + (f"  ({ev.note})" if ev.note else ""))


registry_app = typer.Typer(help="Where the registry lives and its upkeep (shared PostgreSQL + S3 registries).",
                           no_args_is_help=True)


@registry_app.command("info")
def info_cmd() -> None:
    """Which registry this machine uses and how many versions it holds."""
    reg = _registry()
    records = reg.list()
    typer.echo(f"registry: {reg.store.describe()}")
    typer.echo(f"versions: {len(records)} of {len({r.name for r in records})} names")


@registry_app.command("gc")
def gc_cmd(
    grace: float = typer.Option(None, "--grace", help="Only remove leftovers older than this many seconds "
                                                      "(default: ADAPTERHUB_GC_GRACE_S, 3600).", min=0),
) -> None:
    """Remove what killed writers left behind: uploads no version references (shared registry), staging
    directories and copies of killed imports, this machine's cache leftovers; quarantine corrupt cache entries."""
    settings = Settings()
    counts = _registry().gc(settings.gc_grace_s if grace is None else grace)
    typer.echo(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items()) or "nothing to remove")


@registry_app.command("migrate")
def migrate_cmd(
    to: str = typer.Option(..., "--to", help="The target registry: postgresql://user:pw@host/db"),
    artifacts: str = typer.Option(None, "--artifacts", help="The target's object store, s3://bucket/prefix "
                                                            "(default: ADAPTERHUB_ARTIFACTS_URL)."),
) -> None:
    """Copy this registry (versions with their numbers, aliases, gates, metrics) into a shared one; every
    version is verified by hash after the copy. Safe to re-run."""
    from adapterhub.registry.migrate import migrate
    from adapterhub.registry.registry import open_store

    settings = Settings()
    source = _registry()
    target = open_store(settings, registry_url=to, artifacts_url=artifacts)
    try:
        report = migrate(source, target, progress=typer.echo)
    finally:
        target.close()
    typer.echo(f"migrated to {target.describe()}: {len(report.copied)} copied, {len(report.skipped)} already there, "
               f"{len(report.aliases)} aliases, {len(report.gates)} gates")


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry")
    app.command("import")(import_cmd)
    app.command("list")(list_cmd)
    app.command("show")(show_cmd)
    app.command("tag")(tag_cmd)
    app.command("untag")(untag_cmd)
    app.command("rm")(rm_cmd)
    app.command("export")(export_cmd)
    app.command("verify")(verify_cmd)
    app.command("history")(history_cmd)
