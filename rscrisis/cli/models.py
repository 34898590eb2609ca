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
    from rscrisis.cli.console import print_fields, print_json, verbosity
    from rscrisis.io.model_file import model_summary, read_meta

    verbosity(ctx, verbose, quiet)
    summary = model_summary(read_meta(model))
    if json_output:
        print_json(summary)
        return
    print_fields(summary)


def models_command(
    ctx: typer.Context, json_output: JsonOutput = False, verbose: Verbose = 0, quiet: Quiet = False
) -> None:
    """List the encoders --encoder accepts, with parameter counts (3 input bands)."""
    from rscrisis.cli.console import print_json, print_table, verbosity
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
    print_table(
        ["encoder", "parameters", "encoder only", "note"],
        [
            [
                r["encoder"] + (" (default)" if r["default"] else ""),
                f"{r['parameters'] / 1e6:.1f} M",
                f"{r['encoder_parameters'] / 1e6:.1f} M",
                r["note"],
            ]
            for r in rows
        ],
    )
