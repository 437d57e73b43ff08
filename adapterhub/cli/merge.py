"""``adapterhub merge``: fold a LoRA version into its base (QLoRA-correct) with a parity report."""

from __future__ import annotations

from pathlib import Path

import typer

from adapterhub.cli.context import open_registry
from adapterhub.cli.extras import needs


def merge_cmd(
    ref: str = typer.Argument(..., help="Adapter ref, e.g. lumen@production."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (HF model)."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16, fp16 or fp32."),
    bits: int = typer.Option(None, "--bits", help="Also write a 4- or 8-bit variant (bitsandbytes)."),
    threshold: float = typer.Option(1.0, "--threshold", help="Greedy exact-match rate vs adapter mode a dtype must reach."),
    force: bool = typer.Option(False, "--force", help="Keep the merge even below the threshold."),
    register_as: str = typer.Option(None, "--register", help="Register the merged model under this name."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="Allow a base that ships its own modeling code to run it."),
) -> None:
    """Merge an adapter into its base; prints and saves the parity report."""
    with needs("train", "adapterhub merge"):
        from adapterhub.export.api import merge
    from adapterhub.settings import Settings

    settings = Settings()
    result = merge(open_registry(settings), settings, ref, out, dtype=dtype, bits=bits, threshold=threshold,
                   force=force, register_as=register_as, trust_remote_code=trust_remote_code)
    p = result.parity
    typer.echo(f"merged {p['adapter']} into {p['base']} ({p['dtype']}"
               f"{', dequantized from ' + p['dequantized_from'] if p['dequantized_from'] else ''}) → {result.out_dir}")
    typer.echo(f"parity: {p['exact_match']:.0%} greedy exact match on {p['prompts']} prompts, "
               f"max logit diff {p['max_logit_diff']}  (report: {result.out_dir / 'parity.json'})")
    if p.get("note"):
        typer.echo(p["note"])
    if result.quantized_dir:
        typer.echo(f"quantized variant: {result.quantized_dir}  → adapterhub serve --base {result.quantized_dir}")
    if result.record:
        typer.echo(f"registered {result.record.ref}  → adapterhub serve --merged {result.record.ref}")


def register(app: typer.Typer) -> None:
    app.command("merge")(merge_cmd)
