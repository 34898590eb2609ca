"""``rscrisis noise``: a noisy copy of building footprints (OSM-like label noise)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.options import JsonOutput, Overwrite, Quiet, Seed, Verbose
from rscrisis.geo.label_noise import LabelNoise

N = LabelNoise


def noise_command(
    ctx: typer.Context,
    labels: Annotated[Path, typer.Argument(help="Building footprints (any OGR format and CRS).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Noisy copy to write (.gpkg, ...).")],
    drop: Annotated[float, typer.Option(help="Fraction of buildings removed.")] = N.drop,
    shift: Annotated[
        tuple[float, float],
        typer.Option(help="Offset shared by all outlines, x and y in metres."),
    ] = N.global_shift_m,
    jitter: Annotated[
        float, typer.Option(help="Std of an extra per-building offset (m).")
    ] = N.jitter_m,
    buffer_std: Annotated[
        float, typer.Option(help="Std of per-building erosion/dilation (m).")
    ] = N.buffer_std_m,
    simplify: Annotated[
        float, typer.Option(help="Douglas-Peucker tolerance: cut corners (m).")
    ] = N.simplify_m,
    false_blobs: Annotated[
        float, typer.Option(help="False polygons added, as a fraction of the building count.")
    ] = N.false_blobs,
    seed: Seed = N.seed,
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Write a copy of LABELS with OpenStreetMap-like noise: missing buildings, a shared offset
    plus jitter, fattened/thinned and simplified outlines, false blobs. Train on it to measure
    how robust a model (or pretrain's robust loss) is to label noise of a given strength."""
    from rscrisis.cli.console import print_json, say, verbosity
    from rscrisis.geo.label_noise import write_noisy_labels

    level = verbosity(ctx, verbose, quiet)
    for name, value in (("drop", drop), ("false-blobs", false_blobs)):
        if not 0 <= value <= 1:
            raise typer.BadParameter(f"must be between 0 and 1, got {value}", param_hint=name)
    noise = LabelNoise(drop, tuple(shift), jitter, buffer_std, simplify, false_blobs, seed)
    summary = write_noisy_labels(labels, out, noise, overwrite=overwrite)
    if json_output:
        print_json(summary)
    say(f"{out}: {summary['polygons_out']} noisy polygons from {summary['buildings_in']}", level)
