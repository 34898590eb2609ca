"""``rscrisis predict``: model + tile sets -> prediction set, or model + scene -> building map."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.options import (
    DeviceOpt,
    JsonOutput,
    ModelPath,
    OutDir,
    Overwrite,
    Quiet,
    Seed,
    Threads,
    Tta,
    Verbose,
    choice_enum,
    default,
    describe,
    parse_int_list,
)
from rscrisis.config import PrecisionName, PredictConfig, ProbFormat, SceneConfig

P = PredictConfig
S = SceneConfig
ProbFormatChoice = choice_enum("ProbFormatChoice", ProbFormat)
PrecisionChoice = choice_enum("PrecisionChoice", PrecisionName)
SCENE = "Whole scene (a raster input)"
TILES = "Tile sets"


def _is_tileset(path: Path) -> bool:
    from rscrisis.io.tileset import INDEX

    return path.is_dir() and (path / INDEX).exists()


def predict_command(
    ctx: typer.Context,
    model: ModelPath,
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Tile set folders (made by rscrisis tile), or ONE scene: a GeoTIFF/VRT (sidecar "
            "georeferencing and geographic CRSs welcome), a folder holding one, or a glob."
        ),
    ],
    out: OutDir,
    batch_size: Annotated[int, typer.Option(help=describe(P, "batch_size"))] = default(
        P, "batch_size"
    ),
    device: DeviceOpt = default(P, "device"),
    threads: Threads = None,
    tta: Tta = False,
    mc_samples: Annotated[
        int, typer.Option(help=describe(P, "mc_samples"), rich_help_panel=TILES)
    ] = default(P, "mc_samples"),
    seed: Seed = default(P, "seed"),
    window: Annotated[
        int | None, typer.Option(help=describe(S, "window"), rich_help_panel=SCENE)
    ] = None,
    overlap: Annotated[
        int | None, typer.Option(help=describe(S, "overlap"), rich_help_panel=SCENE)
    ] = None,
    resolution: Annotated[
        float | None, typer.Option(help=describe(S, "resolution"), rich_help_panel=SCENE)
    ] = None,
    bands: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated 1-based bands, e.g. 3,2,1 " + "(default: the model's).",
            rich_help_panel=SCENE,
        ),
    ] = None,
    prob_format: Annotated[
        ProbFormatChoice, typer.Option(help=describe(S, "prob_format"), rich_help_panel=SCENE)
    ] = default(S, "prob_format"),
    min_area: Annotated[
        float, typer.Option(help=describe(S, "min_area"), rich_help_panel=SCENE)
    ] = default(S, "min_area"),
    simplify: Annotated[
        float, typer.Option(help=describe(S, "simplify"), rich_help_panel=SCENE)
    ] = default(S, "simplify"),
    max_area: Annotated[
        float, typer.Option(help=describe(S, "max_area"), rich_help_panel=SCENE)
    ] = default(S, "max_area"),
    regularize: Annotated[
        bool,
        typer.Option("--regularize", help=describe(S, "regularize"), rich_help_panel=SCENE),
    ] = default(S, "regularize"),
    geojson: Annotated[
        bool, typer.Option("--geojson", help=describe(S, "geojson"), rich_help_panel=SCENE)
    ] = default(S, "geojson"),
    precision: Annotated[
        PrecisionChoice, typer.Option(help=describe(S, "precision"), rich_help_panel=SCENE)
    ] = default(S, "precision"),
    channels_last: Annotated[
        bool,
        typer.Option(
            "--channels-last/--no-channels-last",
            help=describe(S, "channels_last"),
            rich_help_panel=SCENE,
        ),
    ] = default(S, "channels_last"),
    prefetch: Annotated[
        int, typer.Option(help=describe(S, "prefetch"), rich_help_panel=SCENE)
    ] = default(S, "prefetch"),
    max_output_gb: Annotated[
        float, typer.Option(help=describe(S, "max_output_gb"), rich_help_panel=SCENE)
    ] = default(S, "max_output_gb"),
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Predict tile sets (probability rasters, scores.gpkg with predicted IoU, entropy, margin,
    expected IoU, building fraction, BALD with --mc-samples, embeddings.npy) or a whole scene
    (seamless probability and mask COGs, buildings.gpkg merged across windows, windows.gpkg
    with per-window predicted IoU and uncertainty)."""
    from rscrisis.cli.console import print_json, progress_bar, say, verbosity
    from rscrisis.config import resolve
    from rscrisis.errors import InputError

    level = verbosity(ctx, verbose, quiet)
    paths = [Path(i) for i in inputs]
    tilesets = [p for p in paths if _is_tileset(p)]
    if tilesets and len(tilesets) != len(paths):
        other = next(p for p in paths if not _is_tileset(p))
        raise InputError(
            "is not a tile set, but other inputs are; predict takes tile sets or one scene",
            path=other,
            hint="run tile sets and scenes in separate predict calls",
        )
    if tilesets:
        from rscrisis.predict.tiles import predict_tiles

        config = resolve(
            PredictConfig,
            batch_size=batch_size,
            mc_samples=mc_samples,
            device=device,
            threads=threads,
            tta=tta,
            seed=seed,
        )
        with progress_bar("predicting tiles", enabled=level >= 0) as progress:
            result = predict_tiles(
                model, tilesets, out, config=config, overwrite=overwrite, progress=progress
            )
        if json_output:
            print_json(result.to_dict())
        say(
            f"{result.tiles} tiles predicted into {out} ({result.tiles_per_s:.1f} tiles/s); "
            f"mean predicted IoU {result.mean_pred_iou:.3f}",
            level,
        )
        return
    if len(inputs) != 1:
        raise InputError(
            f"got {len(inputs)} scenes; predict maps one scene at a time",
            hint="mosaic them first (gdalbuildvrt mosaic.vrt *.tif) or tile them",
        )
    if mc_samples:
        raise InputError(
            "--mc-samples applies to tile sets; for a scene use --tta, whose disagreement "
            "is written to windows.gpkg"
        )
    import os

    # torch's OpenMP threads spin while they wait; here they share 2 cores with the reader
    # and writer threads, and a spinning thread steals the core a worker needs (measured:
    # model time 28.4 s -> 26.0 s on a 4915 px scene). Only effective before torch loads,
    # which in the CLI it has not yet.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from rscrisis.predict.scene import predict_scene

    scene_config = resolve(
        SceneConfig,
        window=window,
        overlap=overlap,
        batch_size=batch_size,
        resolution=resolution,
        bands=parse_int_list(bands, "--bands"),
        prob_format=prob_format.value,
        min_area=min_area,
        simplify=simplify,
        max_area=max_area,
        regularize=regularize,
        geojson=geojson,
        tta=tta,
        device=device,
        precision=precision.value,
        channels_last=channels_last,
        threads=threads,
        max_output_gb=max_output_gb,
        prefetch=prefetch,
    )
    with progress_bar("predicting scene", enabled=level >= 0) as progress:
        scene_result = predict_scene(
            model, inputs[0], out, config=scene_config, overwrite=overwrite, progress=progress
        )
    if json_output:
        print_json(scene_result.to_dict())
    say(
        f"{scene_result.width}x{scene_result.height} px mapped into {out} "
        f"({scene_result.megapixels_per_s:.2f} Mpx/s); {scene_result.buildings} buildings",
        level,
    )
