"""Entry point: builds the typer app and maps every error to one line and an exit code.

This is the only place that turns exceptions into output. ``ADAPTERHUB_DEBUG=1`` re-raises instead.
"""

from __future__ import annotations

import logging
import os
import sys

import click
import typer

from adapterhub import __version__
from adapterhub.errors import AdapterHubError

app = typer.Typer(
    name="adapterhub",
    help="Train versioned LoRA adapters, keep them in a registry, publish and serve them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"adapterhub {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        quiet_third_party()


def quiet_third_party() -> None:
    """Hide third-party notices a user cannot act on (bitsandbytes' optional CPU kernels, transformers'
    FutureWarnings and weight-loading bars, GGUF conversion bars); ``--verbose`` shows them."""
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft|torch|accelerate|bitsandbytes)")
    if "transformers" in sys.modules:  # already imported: its settings were read at import
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def _register_commands() -> None:
    from adapterhub.cli import chat, demo, deploy, hub, keys, merge, models, registry, rollout, serve, train

    for mod in (models, registry, rollout, keys, train, serve, merge, chat, hub, deploy, demo):
        mod.register(app)


def _click_errors() -> tuple[type[BaseException], ...]:
    """click's ``ClickException`` and, where typer vendors its own copy of click (typer >= 0.20), that copy's:
    a usage error raised by typer's parser is an instance of the second only."""
    errors: list[type[BaseException]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as vendored  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        pass
    else:
        errors.append(vendored)
    return tuple(errors)


def _debug() -> bool:
    return os.environ.get("ADAPTERHUB_DEBUG", "").lower() in ("1", "true", "yes")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; errors become ``error: <one line>`` on stderr and a non-zero exit code.

    A mistyped command or option is the user's, not a bug: click's usage error (the command's usage
    line, ``Error: …`` with the closest name suggested, exit code 2), as git or the ``hf`` CLI print it.
    """
    _register_commands()
    try:
        rc = app(args=argv, prog_name="adapterhub", standalone_mode=False)
        if isinstance(rc, int) and rc:  # without standalone mode, click returns typer.Exit(n)'s code
            sys.exit(rc)
    except AdapterHubError as e:
        if _debug():
            raise
        typer.echo(f"error: {e.message}".replace("\n", " "), err=True)
        sys.exit(e.exit_code)
    except (click.exceptions.Exit, typer.Exit) as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except _click_errors() as e:
        e.show()  # type: ignore[attr-defined]
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        if _debug():
            raise
        typer.echo(f"error: {e.strerror}: {e.filename}", err=True)
        sys.exit(2)
    except Exception as e:  # an unexpected bug: still one line unless debugging
        if _debug():
            raise
        typer.echo(f"error: {type(e).__name__}: {e} (set ADAPTERHUB_DEBUG=1 for the traceback)".replace("\n", " "),
                   err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
