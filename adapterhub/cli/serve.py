"""``adapterhub serve``: the OpenAI-compatible server (options generated from ``ServeConfig``)."""

from __future__ import annotations

import typer

from adapterhub.cli.options import command_from_model
from adapterhub.serving.api import ServeConfig


def _serve(config: ServeConfig) -> None:
    if config.ray:
        import os

        from adapterhub.deploy.api import serve_on_ray

        serve_on_ray(config, os.environ.get("ADAPTERHUB_HOME"), announce=lambda line: typer.echo(line, err=True))
        return
    from adapterhub.serving.api import serve

    serve(config, announce=lambda line: typer.echo(line, err=True))


def register(app: typer.Typer) -> None:
    cmd = command_from_model(
        ServeConfig, _serve, doc="Serve the base model and registry adapters behind an OpenAI-compatible API.",
        short={"adapters": "-a"}, envvar={"api_key": "ADAPTERHUB_API_KEY", "admin_key": "ADAPTERHUB_ADMIN_KEY"})
    app.command("serve")(cmd)
