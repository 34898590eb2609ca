"""``rscrisis noise``: a noisy copy of building footprints (OSM-like label noise)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.configured import Options, Spell, configured
from rscrisis.cli.options import JsonOutput, Overwrite, Quiet, Verbose
from rscrisis.config import NoiseConfig


@configured(
    NoiseConfig,
    spell={
        "global_shift_m": Spell(decls=("--shift",)),
        "jitter_m": Spell(decls=("--jitter",)),
        "buffer_std_m": Spell(decls=("--buffer-std",)),
        "simplify_m": Spell(decls=("--simplify",)),
    },
)
def noise_command(
    ctx: typer.Context,
    labels: Annotated[Path, typer.Argument(help="Building footprints (any OGR format and CRS).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Noisy copy to write (.gpkg, ...).")],
    options: Options,
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
    summary = write_noisy_labels(labels, out, options.resolve(), overwrite=overwrite)
    if json_output:
        print_json(summary)
    say(f"{out}: {summary['polygons_out']} noisy polygons from {summary['buildings_in']}", level)
