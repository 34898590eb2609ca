"""``rscrisis tile``: GeoTIFF scenes (+ vector labels) -> tile set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.options import (
    JsonOutput,
    OutDir,
    Overwrite,
    Quiet,
    Resume,
    Verbose,
    choice_enum,
    default,
    describe,
    parse_int_list,
)
from rscrisis.config import Compression, ResamplingName, TileConfig

ResamplingChoice = choice_enum("ResamplingChoice", ResamplingName)
CompressionChoice = choice_enum("CompressionChoice", Compression)
T = TileConfig


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
    labels: Annotated[
        list[Path] | None,
        typer.Option(
            "--labels",
            "-l",
            help="Building footprints (GeoPackage, GeoJSON, "
            "Shapefile; any CRS). Repeat for several files. Burnt as 1 in masks/.",
        ),
    ] = None,
    size: Annotated[int, typer.Option(help=describe(T, "size"))] = default(T, "size"),
    overlap: Annotated[int, typer.Option(help=describe(T, "overlap"))] = default(T, "overlap"),
    min_valid: Annotated[float, typer.Option(help=describe(T, "min_valid"))] = default(
        T, "min_valid"
    ),
    bands: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated 1-based source bands, e.g. 3,2,1 "
            "(default: all bands except alpha)."
        ),
    ] = None,
    resolution: Annotated[
        float | None,
        typer.Option(
            help=describe(T, "resolution") + "; for geographic CRSs "
            "converted to degrees at the scene centre"
        ),
    ] = None,
    resampling: Annotated[ResamplingChoice, typer.Option(help=describe(T, "resampling"))] = default(
        T, "resampling"
    ),
    compress: Annotated[CompressionChoice, typer.Option(help=describe(T, "compress"))] = default(
        T, "compress"
    ),
    all_touched: Annotated[
        bool, typer.Option("--all-touched", help=describe(T, "all_touched"))
    ] = default(T, "all_touched"),
    workers: Annotated[int, typer.Option(help=describe(T, "workers"))] = default(T, "workers"),
    max_output_gb: Annotated[float, typer.Option(help=describe(T, "max_output_gb"))] = default(
        T, "max_output_gb"
    ),
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
    from rscrisis.config import resolve
    from rscrisis.geo.tiling import tile

    level = verbosity(ctx, verbose, quiet)
    config = resolve(
        TileConfig,
        size=size,
        overlap=overlap,
        min_valid=min_valid,
        bands=parse_int_list(bands, "--bands"),
        resolution=resolution,
        resampling=ResamplingChoice(resampling).value,
        compress=CompressionChoice(compress).value,
        all_touched=all_touched,
        workers=workers,
        max_output_gb=max_output_gb,
    )
    with progress_bar("tiling", enabled=level >= 0) as progress:
        result = tile(
            inputs,
            out,
            labels=labels,
            config=config,
            overwrite=overwrite,
            resume=resume,
            progress=progress,
        )
    if json_output:
        print_json(result.to_dict())
    say(
        f"{result.tiles} tiles in {out} ({result.written} written, {result.resumed} resumed, "
        f"{result.skipped_low_valid} skipped as mostly nodata) in {result.seconds:.1f} s",
        level,
    )
