"""``rscrisis predict``: model + tile sets -> prediction set, or model + scene -> building map."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.configured import Options, Spell, configured
from rscrisis.cli.options import JsonOutput, ModelPath, OutDir, Overwrite, Quiet, Resume, Verbose
from rscrisis.config import PredictConfig, SceneConfig

SCENE = "Whole scene (a raster input)"
TILES = "Tile sets"


def _is_tileset(path: Path) -> bool:
    from rscrisis.io.tileset import INDEX

    return path.is_dir() and (path / INDEX).exists()


@configured(
    PredictConfig,
    SceneConfig,
    panels={PredictConfig: TILES, SceneConfig: SCENE},
    spell={
        "bands": Spell(
            comma=True,
            help="comma-separated 1-based bands, e.g. 3,2,1 (default: the model's)",
        ),
    },
)
def predict_command(
    ctx: typer.Context,
    model: ModelPath,
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Tile set folders (made by rscrisis tile), or scenes: GeoTIFF/VRT files "
            "(sidecar georeferencing and geographic CRSs welcome), folders of them, quoted "
            "globs, or a .txt file listing paths or GDAL URLs (/vsicurl/...). One scene maps "
            "into --out; several (or any with --scheduler or --resume) into "
            "--out/scenes/<scene>/ with mosaics over all."
        ),
    ],
    out: OutDir,
    options: Options,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Where the scenes are mapped: absent, in this process; local or local:N, a "
            "Dask LocalCluster of N worker processes; tcp://host:port, a running Dask "
            "scheduler (see README: on a cluster).",
            metavar="WHERE",
        ),
    ] = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Predict tile sets (probability rasters, scores.gpkg with predicted IoU, entropy, margin,
    expected IoU, building fraction, BALD with --mc-samples, embeddings.npy) or a whole scene
    (seamless probability and mask COGs, buildings.gpkg merged across windows, windows.gpkg
    with per-window predicted IoU and uncertainty)."""
    from rscrisis.cli.console import print_json, progress_bar, say, verbosity
    from rscrisis.errors import InputError

    level = verbosity(ctx, verbose, quiet)
    paths = [Path(i) for i in inputs]
    tilesets = [p for p in paths if _is_tileset(p)]
    if tilesets and len(tilesets) != len(paths):
        other = next(p for p in paths if not _is_tileset(p))
        raise InputError(
            "is not a tile set, but other inputs are; predict takes tile sets or scenes",
            path=other,
            hint="run tile sets and scenes in separate predict calls",
        )
    if tilesets:
        from rscrisis.predict.tiles import predict_tiles

        if resume:
            raise InputError(
                "--resume applies to scenes; a prediction set is redone with --overwrite"
            )
        config = options.resolve(PredictConfig)
        with progress_bar("predicting tiles", enabled=level >= 0) as progress:
            result = predict_tiles(
                model,
                tilesets,
                out,
                config=config,
                overwrite=overwrite,
                progress=progress,
                scheduler=scheduler,
            )
        if json_output:
            print_json(result.to_dict())
        say(
            f"{result.tiles} tiles predicted into {out} ({result.tiles_per_s:.1f} tiles/s); "
            f"mean predicted IoU {result.mean_pred_iou:.3f}",
            level,
        )
        return
    from rscrisis.predict.many import expand_scenes

    scenes = expand_scenes(list(inputs))
    if len(scenes) > 1 or scheduler or resume:
        _predict_many(model, scenes, out, options, scheduler, overwrite, resume, json_output, level)
        return
    if options.given.get("mc_samples"):
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

    scene_config = options.resolve(SceneConfig)
    with progress_bar("predicting scene", enabled=level >= 0) as progress:
        scene_result = predict_scene(
            model, scenes[0], out, config=scene_config, overwrite=overwrite, progress=progress
        )
    if json_output:
        print_json(scene_result.to_dict())
    say(
        f"{scene_result.width}x{scene_result.height} px mapped into {out} "
        f"({scene_result.megapixels_per_s:.2f} Mpx/s); {scene_result.buildings} buildings",
        level,
    )


def _predict_many(model, scenes, out, options, scheduler, overwrite, resume, json_output, level):
    """Several scenes (rscrisis.predict.many): one task each, in this process or on Dask."""
    import os

    from rscrisis.cli.console import print_json, progress_bar, say
    from rscrisis.errors import ScenesFailedError
    from rscrisis.predict.many import predict_scenes

    if options.given.get("mc_samples"):
        from rscrisis.errors import InputError

        raise InputError("--mc-samples applies to tile sets; for scenes use --tta")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with progress_bar("predicting scenes", enabled=level >= 0) as progress:
        result = predict_scenes(
            model,
            scenes,
            out,
            config=options.resolve(SceneConfig),
            scheduler=scheduler,
            overwrite=overwrite,
            resume=resume,
            progress=progress,
        )
    if json_output:
        print_json(result.to_dict())
    say(
        f"{result.done} of {result.scenes} scenes mapped into {out} ({result.resumed} resumed, "
        f"{result.failed} failed) on {result.scheduler} in {result.seconds:.1f} s; "
        f"{result.buildings} buildings",
        level,
    )
    if result.failed:
        failed = [r for r in result.records if r["status"] == "failed"]
        first = failed[0]
        raise ScenesFailedError(
            f"{result.failed} of {result.scenes} scenes failed (first, {first['scene_id']}: "
            f"{first['reason']})",
            path=Path(out) / "scenes.gpkg",
            hint="the other scenes are complete; fix or drop the failed ones and rerun with "
            "--resume",
            bad_input=all(r.get("bad_input") for r in failed),
        )
