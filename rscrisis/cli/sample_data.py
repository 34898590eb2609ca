"""``rscrisis sample-data``: regenerate the synthetic scenes shipped in sample_data/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.options import JsonOutput, Overwrite, Quiet, Verbose, default, describe
from rscrisis.config import SyntheticConfig

S = SyntheticConfig


def sample_data_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("sample_data"),
    seed: Annotated[int, typer.Option(help=describe(S, "seed"))] = default(S, "seed"),
    size_a: Annotated[int, typer.Option(help=describe(S, "size_a"))] = default(S, "size_a"),
    size_b: Annotated[int, typer.Option(help=describe(S, "size_b"))] = default(S, "size_b"),
    gsd: Annotated[float, typer.Option(help=describe(S, "gsd"))] = default(S, "gsd"),
    epsg: Annotated[int, typer.Option(help=describe(S, "epsg"))] = default(S, "epsg"),
    jpeg_quality: Annotated[int, typer.Option(help=describe(S, "jpeg_quality"))] = default(
        S, "jpeg_quality"
    ),
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Generate synthetic aerial-like scenes with exact and OSM-like noisy building footprints.

    area_a (pretraining area: scene, truth, noisy OSM-like labels) and area_b (a different-looking
    "new crisis area": scene with a nodata collar, truth). Seeded: same seed, same files.
    """
    from rscrisis.cli.console import print_json, say, verbosity
    from rscrisis.config import resolve
    from rscrisis.synth.scenes import generate_sample_data

    level = verbosity(ctx, verbose, quiet)
    config = resolve(
        SyntheticConfig,
        seed=seed,
        size_a=size_a,
        size_b=size_b,
        gsd=gsd,
        epsg=epsg,
        jpeg_quality=jpeg_quality,
    )
    summary = generate_sample_data(out, config, overwrite=overwrite)
    if json_output:
        print_json(summary)
    areas = summary["areas"]
    say(
        f"sample data in {out}: area_a {areas['area_a']['buildings']} buildings, "
        f"area_b {areas['area_b']['buildings']} buildings",
        level,
    )
