"""``rscrisis adapt``: model + the new area's unlabelled tile sets -> adapted model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.options import (
    DeviceOpt,
    JsonOutput,
    ModelPath,
    Overwrite,
    Quiet,
    Seed,
    Threads,
    TileSets,
    Verbose,
    choice_enum,
    default,
    describe,
)
from rscrisis.config import AdaptConfig, AdaptMethod, PrecisionName

A = AdaptConfig
MethodChoice = choice_enum("MethodChoice", AdaptMethod)
PrecisionChoice = choice_enum("PrecisionChoice", PrecisionName)


def adapt_command(
    ctx: typer.Context,
    model: ModelPath,
    tilesets: TileSets,
    out: Annotated[Path, typer.Option("--out", "-o", help="Adapted model file (.safetensors).")],
    method: Annotated[
        list[MethodChoice] | None,
        typer.Option(
            help=describe(A, "methods")
            + f". Repeat for several; default: {', '.join(default(A, 'methods'))}."
        ),
    ] = None,
    adabn_passes: Annotated[int, typer.Option(help=describe(A, "adabn_passes"))] = default(
        A, "adabn_passes"
    ),
    adabn_weight: Annotated[float, typer.Option(help=describe(A, "adabn_weight"))] = default(
        A, "adabn_weight"
    ),
    steps: Annotated[int, typer.Option(help=describe(A, "steps"))] = default(A, "steps"),
    batch_size: Annotated[int, typer.Option(help=describe(A, "batch_size"))] = default(
        A, "batch_size"
    ),
    lr_scale: Annotated[float, typer.Option(help=describe(A, "lr_scale"))] = default(A, "lr_scale"),
    ema: Annotated[float, typer.Option(help=describe(A, "ema"))] = default(A, "ema"),
    confidence: Annotated[float, typer.Option(help=describe(A, "confidence"))] = default(
        A, "confidence"
    ),
    max_spread: Annotated[float, typer.Option(help=describe(A, "max_spread"))] = default(
        A, "max_spread"
    ),
    replay_ratio: Annotated[float, typer.Option(help=describe(A, "replay_ratio"))] = default(
        A, "replay_ratio"
    ),
    device: DeviceOpt = default(A, "device"),
    precision: Annotated[PrecisionChoice, typer.Option(help=describe(A, "precision"))] = default(
        A, "precision"
    ),
    threads: Threads = None,
    seed: Seed = default(A, "seed"),
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Adapt MODEL to a new area from its unlabelled tiles, before anyone labels them:
    batch-norm statistics of the area (adabn), self-supervised encoder training (simsiam),
    self-training on confident pseudo-labels (selftrain). The adapted model is used like any
    other by predict, rank and finetune; its metadata records the adaptation."""
    from rscrisis.cli.console import print_json, progress_bar, say, verbosity
    from rscrisis.config import resolve
    from rscrisis.ml.adaptation import adapt

    level = verbosity(ctx, verbose, quiet)
    config = resolve(
        AdaptConfig,
        methods=tuple(getattr(m, "value", m) for m in method) if method else default(A, "methods"),
        adabn_passes=adabn_passes,
        adabn_weight=adabn_weight,
        steps=steps,
        batch_size=batch_size,
        lr_scale=lr_scale,
        ema=ema,
        confidence=confidence,
        max_spread=max_spread,
        replay_ratio=replay_ratio,
        device=device,
        precision=getattr(precision, "value", precision),
        threads=threads,
        seed=seed,
    )
    with progress_bar("adapting", enabled=level >= 0) as progress:
        result = adapt(model, tilesets, out, config=config, overwrite=overwrite, progress=progress)
    if json_output:
        print_json(result.to_dict())
    done = ", ".join(f"{m['method']} {m['seconds']:.0f} s" for m in result.methods)
    say(f"model {out}: adapted to {result.tiles} unlabelled tiles ({done})", level)
