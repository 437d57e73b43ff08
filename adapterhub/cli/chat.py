"""``adapterhub chat``: talk to a base, merged model or adapter in the terminal."""

from __future__ import annotations

import typer

from adapterhub.cli.extras import needs
from adapterhub.models import DEMO_MODEL


def chat_cmd(
    model: str = typer.Argument(DEMO_MODEL, help="Base model, or a merged model ref in the registry."),
    adapter: str = typer.Option(None, "--adapter", "-a", help="Adapter ref to apply, e.g. lumen@production."),
    bits: int = typer.Option(None, "--bits", help="Load the base in 4 or 8 bit (bitsandbytes)."),
    system: str = typer.Option(None, "--system", help="System prompt."),
    template: str = typer.Option(None, "--template", help="Named chat template (default: the adapter's, then the base's)."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Answer length limit."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="Allow a base that ships its own modeling code to run it."),
    image: str = typer.Option(None, "--image", help="An image file sent with the first question (vision models)."),
) -> None:
    """Multi-turn terminal chat with streamed answers (/reset, /exit)."""
    with needs("serve", "adapterhub chat"):
        from adapterhub.serving.api import chat

    chat(model, adapter=adapter, bits=bits, system=system, template=template, max_tokens=max_tokens,
         temperature=temperature, trust_remote_code=trust_remote_code, image=image)


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_cmd)
