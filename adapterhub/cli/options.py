"""Typer options generated from a pydantic model's fields, so a flag is declared once (in the model,
with its description as the help text) and the CLI cannot drift from what the library accepts."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def _cli_type(annotation: Any) -> Any:
    """The type typer parses: ``X | None`` → X, ``Literal[4, 8]`` → int, ``list[str]`` stays."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _cli_type(args[0]) if len(args) == 1 else str
    if origin is typing.Literal:
        return type(typing.get_args(annotation)[0])
    return annotation


def usage_error(message: str) -> Exception:
    """A usage error of the running command (printed by the CLI's main as click prints its own: the usage
    line, ``Error: message``, exit code 2). typer >= 0.20 runs on its own copy of click: use that one."""
    try:
        from typer._click import exceptions, globals  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        from click import exceptions, globals  # type: ignore[no-redef,unused-ignore]
    return exceptions.UsageError(message, globals.get_current_context(silent=True))  # type: ignore[no-any-return]


def command_from_model(model: type[M], run: Callable[[M], None], *, doc: str, skip: tuple[str, ...] = (),
                       short: dict[str, str] | None = None, envvar: dict[str, str] | None = None) -> Callable[..., None]:
    """A typer command with one ``--option`` per field of ``model`` (except ``skip`` and dict fields)
    that validates the values into ``model`` (every bad value listed) and calls ``run`` with it."""
    params, annotations = [], {}
    for name, field in model.model_fields.items():
        ann = _cli_type(field.annotation)
        if name in skip or typing.get_origin(ann) is dict:
            continue
        default = field.get_default(call_default_factory=True)
        flags = [f"--{name.replace('_', '-')}"] + ([short[name]] if short and name in short else [])
        opt = typer.Option(default, *flags, help=field.description, envvar=(envvar or {}).get(name),
                           show_default=default not in (None, [], ""))
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann))
        annotations[name] = ann

    def command(**values: Any) -> None:
        try:
            config = model(**values)
        except ValidationError as e:  # every bad value at once, as a usage error of this command
            raise usage_error("invalid options: " + "; ".join(
                f"--{str(x['loc'][0]).replace('_', '-')}: {x['msg']}" if x["loc"] else
                str(x["msg"]).removeprefix("Value error, ") for x in e.errors())) from None
        run(config)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = annotations
    command.__doc__ = doc
    return command
