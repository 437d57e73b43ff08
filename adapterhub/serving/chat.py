"""A terminal chat on an engine: multi-turn history, streamed tokens, ``/reset`` and ``/exit``.

Reads user turns line by line from ``stdin`` (so it can be driven by a pipe as well as a person).
"""

from __future__ import annotations

import asyncio
from typing import Any, TextIO

from adapterhub.serving.engines.base import Engine, GenerationRequest, SamplingParams

HELP = "commands: /reset (forget the conversation), /exit"


def run_chat(engine: Engine, *, adapter_key: str | None, template: str | None, system: str | None,
             max_tokens: int, temperature: float, stdin: TextIO, stdout: TextIO, label: str,
             image: Any = None) -> int:
    """Run until ``/exit`` or end of input; returns the number of answered turns. ``image`` (a PIL image)
    goes with the first user turn, as the source material's ``xtuner chat --image``."""
    history: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    initial = list(history)
    turns = 0
    stdout.write(f"chatting with {label}. {HELP}\n")
    stdout.flush()
    while True:
        stdout.write("\n>>> ")
        stdout.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = list(initial)
            stdout.write("(conversation reset)\n")
            continue
        if text.startswith("/"):
            stdout.write(f"unknown command {text}. {HELP}\n")
            continue
        inputs = None
        if image is not None and not any(m["role"] == "user" for m in history):
            history.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
        else:
            history.append({"role": "user", "content": text})
        if image is not None:
            prompt, inputs = engine.encode_chat_images(history, template, [image])
        else:
            prompt = engine.encode_chat(history, template)
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature)
        reply = asyncio.run(_stream(engine, GenerationRequest(prompt, params, adapter_key, inputs=inputs), stdout))
        history.append({"role": "assistant", "content": reply})
        turns += 1
    stdout.write("\n")
    return turns


async def _stream(engine: Engine, req: GenerationRequest, stdout: TextIO) -> str:
    parts = []
    async for d in engine.generate(req):
        if d.text:
            parts.append(d.text)
            stdout.write(d.text)
            stdout.flush()
    stdout.write("\n")
    return "".join(parts)
