"""Placeholder: filled by a later step."""

import typer


def register(app: typer.Typer) -> None:
    pass
