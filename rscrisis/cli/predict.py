"""``rscrisis predict``: model + tile sets -> prediction set."""

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
    Verbose,
    default,
    describe,
)
from rscrisis.config import PredictConfig

P = PredictConfig


def predict_command(
    ctx: typer.Context,
    model: ModelPath,
    inputs: Annotated[list[Path], typer.Argument(help="Tile set folders.")],
    out: OutDir,
    batch_size: Annotated[int, typer.Option(help=describe(P, "batch_size"))] = default(
        P, "batch_size"
    ),
    mc_samples: Annotated[int, typer.Option(help=describe(P, "mc_samples"))] = default(
        P, "mc_samples"
    ),
    device: DeviceOpt = default(P, "device"),
    threads: Threads = None,
    seed: Seed = default(P, "seed"),
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Predict every tile: probability rasters, scores.gpkg (predicted IoU, entropy, margin,
    expected IoU, building fraction, BALD with --mc-samples) and embeddings.npy."""
    from rscrisis.cli.console import print_json, progress_bar, say, verbosity
    from rscrisis.config import resolve
    from rscrisis.errors import InputError
    from rscrisis.inference import predict_tiles

    level = verbosity(ctx, verbose, quiet)
    for item in inputs:
        if item.is_file():
            raise InputError(
                "is a file; predict reads tile sets (folders made by rscrisis tile)",
                path=item,
                hint=f"run rscrisis tile {item} --out tiles/ first",
            )
    config = resolve(
        PredictConfig,
        batch_size=batch_size,
        mc_samples=mc_samples,
        device=device,
        threads=threads,
        seed=seed,
    )
    with progress_bar("predicting", enabled=level >= 0) as progress:
        result = predict_tiles(
            model, inputs, out, config=config, overwrite=overwrite, progress=progress
        )
    if json_output:
        print_json(result.to_dict())
    say(
        f"{result.tiles} tiles predicted into {out} ({result.tiles_per_s:.1f} tiles/s); "
        f"mean predicted IoU {result.mean_pred_iou:.3f}",
        level,
    )
