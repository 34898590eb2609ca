"""``rscrisis info`` and ``rscrisis models``: what a model file holds; which encoders exist."""

from __future__ import annotations

from typing import Any

import typer

from rscrisis.cli.options import JsonOutput, ModelPath, Quiet, Verbose


def info_command(
    ctx: typer.Context,
    model: ModelPath,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Print a model file's metadata (architecture, bands, normalisation, training)."""
    from rscrisis.cli.console import print_json, stderr, verbosity
    from rscrisis.ml.model import read_meta
    from rscrisis.predict.tiles import model_summary

    verbosity(ctx, verbose, quiet)
    summary = model_summary(read_meta(model))
    if json_output:
        print_json(summary)
        return
    for key, value in summary.items():
        stderr.print(f"[bold]{key}[/bold]: {value}", highlight=False, soft_wrap=True)


def models_command(
    ctx: typer.Context, json_output: JsonOutput = False, verbose: Verbose = 0, quiet: Quiet = False
) -> None:
    """List the encoders --encoder accepts, with parameter counts (3 input bands)."""
    from rscrisis.cli.console import print_json, stderr, verbosity
    from rscrisis.ml.model import DEFAULT_ENCODER, ENCODERS, BuildingSegmenter, count_parameters

    verbosity(ctx, verbose, quiet)
    rows: list[dict[str, Any]] = []
    for name, note in ENCODERS.items():
        net = BuildingSegmenter(name, 3)
        rows.append(
            {
                "encoder": name,
                "parameters": count_parameters(net),
                "encoder_parameters": count_parameters(net.unet.encoder),
                "default": name == DEFAULT_ENCODER,
                "note": note,
            }
        )
    if json_output:
        print_json(rows)
        return
    from rich.table import Table

    table = Table()
    for col in ("encoder", "parameters", "encoder only", "note"):
        table.add_column(col)
    for r in rows:
        mark = " (default)" if r["default"] else ""
        table.add_row(
            r["encoder"] + mark,
            f"{r['parameters'] / 1e6:.1f} M",
            f"{r['encoder_parameters'] / 1e6:.1f} M",
            r["note"],
        )
    stderr.print(table)
