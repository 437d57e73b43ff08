"""``adapterhub push`` and ``adapterhub pull``."""

from __future__ import annotations

import typer

from adapterhub.cli.context import open_registry
from adapterhub.hub.sync import make_publisher, parse_source


def push_cmd(
    ref: str = typer.Argument(..., help="Version to publish, e.g. lumen@3 or lumen@production."),
    to: str = typer.Option(..., "--to", help="hf or openxlab."),
    repo: str = typer.Option(..., "--repo", help="OWNER/NAME on the hub."),
    private: bool = typer.Option(False, "--private", help="Create the repository private (hf)."),
    alias_tag: bool = typer.Option(False, "--alias-tag", help="Also tag the commit with the version's aliases."),
) -> None:
    """Publish a version (files + model card) as one commit tagged v<version>."""
    result = make_publisher(to).push(open_registry(), ref, repo, private=private, alias_tags=alias_tag)
    if result.created:
        typer.echo(f"published {ref} to {to}:{repo} as tag {result.tag} ({result.url})")
    else:
        typer.echo(f"{to}:{repo} already has {ref} as tag {result.tag}: nothing to do")


def pull_cmd(
    source: str = typer.Argument(..., help="hf:OWNER/NAME[@TAG] or openxlab:OWNER/NAME[@TAG]."),
    name: str = typer.Option(..., "--name", "-n", help="Registry name to register it under."),
) -> None:
    """Download a published version, verify it against its manifest, and register it."""
    scheme, repo, rev = parse_source(source)
    record, created = make_publisher(scheme).pull(open_registry(), repo, rev, name)
    word = "registered" if created else "already had it as"
    typer.echo(f"{word} {record.ref} (sha256:{record.content_hash[:12]}) from {source}")


def register(app: typer.Typer) -> None:
    app.command("push")(push_cmd)
    app.command("pull")(pull_cmd)
