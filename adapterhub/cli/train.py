"""``adapterhub train``, ``list-cfg``, ``copy-cfg``, ``eval``."""

from __future__ import annotations

from pathlib import Path

import typer

from adapterhub.cli.context import open_registry
from adapterhub.cli.extras import needs


def train_cmd(
    config: str = typer.Argument(..., help="YAML file or built-in config name (see list-cfg)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. train.lr=1e-4 lora.r=8"),
    name: str = typer.Option(None, "--name", "-n", help="Registry name (overrides the config's)."),
    deepspeed: str = typer.Option(None, "--deepspeed", help="zero1|zero2|zero2_offload|zero3|zero3_offload"),
    output: Path = typer.Option(None, "--output", "-o", help="Run directory (default: ~/.adapterhub/runs/NAME-TIME)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint of the run dir."),
    no_register: bool = typer.Option(False, "--no-register", help="Only write the run dir."),
    alias: list[str] = typer.Option([], "--alias", "-a", help="Point these aliases at the new version."),
) -> None:
    """Fine-tune a base model; the result becomes a new version in the registry."""
    from adapterhub.training.api import train_and_register

    result = train_and_register(config, overrides or [], name=name, deepspeed=deepspeed, output=output,
                                resume=resume, register=not no_register, aliases=alias)
    typer.echo(f"run dir: {result.run_dir}  (loss curve: {result.run_dir / 'loss.png'}, log: log.jsonl)")
    typer.echo(f"steps {result.steps} · final loss {result.final_loss:.4f} · {result.tokens_per_s:.0f} tok/s · "
               f"{result.wall_time_s:.0f} s" if result.final_loss is not None else f"steps {result.steps}")
    if result.metrics.get("identity") is not None:
        typer.echo(f"identity {result.metrics['identity']:.2f} · retention {result.metrics['retention']:.2f}")
    if result.record is not None:
        word = "registered" if result.created else "unchanged: identical to"
        base = result.base_id
        if result.record.kind == "bundle":  # a vision bundle is a base: served, or fine-tuned further, as one
            typer.echo(f"{word} {result.record.ref} (vision bundle on {base})  → serve it: adapterhub serve --base "
                       f"{result.record.ref}; fine-tune it: model.base: {result.record.ref}, vision.stage: finetune")
        else:
            typer.echo(f"{word} {result.record.ref}  → serve it: adapterhub serve --base {base} "
                       f"--adapters {result.record.ref}")
    else:
        typer.echo(f"wrote {result.output_dir}")


def list_cfg_cmd(pattern: str = typer.Argument(None, help="Glob, e.g. '*lora*'.")) -> None:
    """Built-in training and DeepSpeed configs."""
    from adapterhub.training.api import list_configs

    for n in list_configs(pattern):
        typer.echo(n)


def copy_cfg_cmd(name: str, dest: Path) -> None:
    """Copy a built-in config to DEST to edit it."""
    from adapterhub.training.api import copy_config

    typer.echo(f"copied {name} to {copy_config(name, dest)}")


def eval_cmd(
    ref: str = typer.Argument(..., help="Adapter ref."),
    name: str = typer.Option(None, "--name", help="Identity name (default: from the training config)."),
    author: str = typer.Option(None, "--author", help="Identity author (default: from the training config)."),
    url: str = typer.Option(None, "--url", help="Evaluate the version as served there (any engine), over HTTP."),
    api_key: str = typer.Option(None, "--api-key", envvar="ADAPTERHUB_API_KEY", help="Key for --url."),
) -> None:
    """Identity and retention scores of an adapter; stored in the registry's metrics."""
    from adapterhub.settings import Settings

    settings = Settings()
    if url:
        from adapterhub.evaluation.api import evaluate_served

        scores = evaluate_served(open_registry(settings), ref, url, name=name, author=author, api_key=api_key)
    else:
        with needs("train", "adapterhub eval"):
            from adapterhub.evaluation.api import evaluate_version
        scores = evaluate_version(open_registry(settings), settings, ref, name=name, author=author)
    typer.echo(f"{ref}: identity {scores['identity']:.2f} ({scores['identity_n']} held-out paraphrases) · "
               f"retention {scores['retention']:.2f} ({scores['retention_n']} general prompts)")


def register(app: typer.Typer) -> None:
    app.command("train", context_settings={"allow_extra_args": False})(train_cmd)
    app.command("list-cfg")(list_cfg_cmd)
    app.command("copy-cfg")(copy_cfg_cmd)
    app.command("eval")(eval_cmd)
