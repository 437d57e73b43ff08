"""``adapterhub deploy openxlab``: generate an OpenXLab Gradio app for a version."""

from __future__ import annotations

from pathlib import Path

import typer

from adapterhub.cli.context import open_registry

deploy_app = typer.Typer(help="Generate deployment artifacts.", no_args_is_help=True)


@deploy_app.command("openxlab")
def openxlab_cmd(
    ref: str = typer.Argument(..., help="Adapter or merged-model ref."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the app repository."),
    model_repo: str = typer.Option(None, "--model-repo", help="OWNER/NAME the version was pushed to."),
    hub: str = typer.Option("openxlab", "--hub", help="Where the app downloads the model from: openxlab or hf."),
    base_repo: str = typer.Option(None, "--base-repo", help="HF id of the base (adapters; default: recorded)."),
    system: str = typer.Option(None, "--system", help="System prompt for every chat."),
) -> None:
    """Write app.py (Gradio, port 7860), requirements.txt, packages.txt and README.md."""
    from adapterhub.deploy.api import generate_openxlab_app

    path = generate_openxlab_app(open_registry(), ref, out, model_repo=model_repo, hub=hub,
                                 base_repo=base_repo, system=system)
    typer.echo(f"wrote an OpenXLab app for {ref} to {path}: push it to an OpenXLab Gradio app repository")


def register(app: typer.Typer) -> None:
    app.add_typer(deploy_app, name="deploy")
