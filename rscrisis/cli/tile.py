"""``rscrisis tile``: GeoTIFF scenes (+ vector labels) -> tile set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.configured import Options, Spell, configured
from rscrisis.cli.options import JsonOutput, OutDir, Overwrite, Quiet, Resume, Verbose
from rscrisis.config import TileConfig


@configured(
    TileConfig,
    spell={
        "bands": Spell(
            comma=True,
            help="comma-separated 1-based source bands, e.g. 3,2,1 (default: all bands "
            "except alpha)",
        ),
        "resolution": Spell(more="; for geographic CRSs converted to degrees at the scene centre"),
    },
)
def tile_command(
    ctx: typer.Context,
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="GeoTIFF files, folders of them, or glob patterns (quote globs). "
            "Georeferencing may sit in .aux.xml sidecars."
        ),
    ],
    out: OutDir,
    options: Options,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Where the scenes are cut: absent, in this process; local or local:N, a Dask "
            "LocalCluster of N worker processes; tcp://host:port, a running Dask scheduler. "
            "The tile set is the same.",
            metavar="WHERE",
        ),
    ] = None,
    labels: Annotated[
        list[Path] | None,
        typer.Option(
            "--labels",
            "-l",
            help="Building footprints (GeoPackage, GeoJSON, "
            "Shapefile; any CRS). Repeat for several files. Burnt as 1 in masks/.",
        ),
    ] = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Cut scenes into a tile set: images/, masks/ (with --labels), index.gpkg, tileset.json.

    Tiles are SIZE x SIZE pixels on a grid of stride SIZE - OVERLAP; edge tiles are padded
    (padding is nodata in images and 255 in masks). Tile ids are `<scene>_r<row>_c<col>`.
    Masks: 1 building, 0 background, 255 ignore. Bad input exits 2 and writes nothing.
    """
    from rscrisis.cli.console import print_json, progress_bar, say, verbosity
    from rscrisis.geo.tiling import tile

    level = verbosity(ctx, verbose, quiet)
    config = options.resolve()
    with progress_bar("tiling", enabled=level >= 0) as progress:
        result = tile(
            inputs,
            out,
            labels=labels,
            config=config,
            overwrite=overwrite,
            resume=resume,
            progress=progress,
            scheduler=scheduler,
        )
    if json_output:
        print_json(result.to_dict())
    say(
        f"{result.tiles} tiles in {out} ({result.written} written, {result.resumed} resumed, "
        f"{result.skipped_low_valid} skipped as mostly nodata) in {result.seconds:.1f} s",
        level,
    )
