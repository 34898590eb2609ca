"""``rscrisis rank``: prediction set -> annotation batch for people."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.options import (
    JsonOutput,
    OutDir,
    Overwrite,
    Quiet,
    Seed,
    Verbose,
    choice_enum,
    default,
    describe,
)
from rscrisis.config import DiversityName, FormulaName, RankConfig
from rscrisis.loop.ranking import FORMULAS

R = RankConfig
FormulaChoice = choice_enum("FormulaChoice", FormulaName)
DiversityChoice = choice_enum("DiversityChoice", DiversityName)
_FORMULA_HELP = "Priority formula (higher = annotate first): " + "; ".join(
    f"{name}: {text}" for name, text in FORMULAS.items()
)


def rank_command(
    ctx: typer.Context,
    pred_set: Annotated[Path, typer.Argument(help="Prediction set (made by rscrisis predict).")],
    out: OutDir,
    formula: Annotated[FormulaChoice, typer.Option(help=_FORMULA_HELP)] = default(R, "formula"),
    top: Annotated[int, typer.Option("--top", "-k", help=describe(R, "top"))] = default(R, "top"),
    diversity: Annotated[DiversityChoice, typer.Option(help=describe(R, "diversity"))] = default(
        R, "diversity"
    ),
    pool_factor: Annotated[int, typer.Option(help=describe(R, "pool_factor"))] = default(
        R, "pool_factor"
    ),
    spacing: Annotated[float, typer.Option(help=describe(R, "spacing"))] = default(R, "spacing"),
    min_area: Annotated[float, typer.Option(help=describe(R, "min_area"))] = default(R, "min_area"),
    simplify: Annotated[float, typer.Option(help=describe(R, "simplify"))] = default(R, "simplify"),
    spatial: Annotated[
        bool, typer.Option("--spatial/--no-spatial", help=describe(R, "spatial"))
    ] = default(R, "spatial"),
    min_valid: Annotated[float, typer.Option(help=describe(R, "min_valid"))] = default(
        R, "min_valid"
    ),
    skip_empty: Annotated[
        bool, typer.Option("--skip-empty", help=describe(R, "skip_empty"))
    ] = default(R, "skip_empty"),
    exclude: Annotated[
        list[Path] | None,
        typer.Option(help="An earlier batch folder whose tiles are not proposed again (repeat)."),
    ] = None,
    regularize: Annotated[
        bool, typer.Option("--regularize/--no-regularize", help=describe(R, "regularize"))
    ] = default(R, "regularize"),
    label_studio: Annotated[
        bool, typer.Option("--label-studio", help=describe(R, "label_studio"))
    ] = default(R, "label_studio"),
    label_studio_prefix: Annotated[
        str, typer.Option(help=describe(R, "label_studio_prefix"))
    ] = default(R, "label_studio_prefix"),
    seed: Seed = default(R, "seed"),
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Rank the tiles of a prediction set and export the top ones as an annotation batch:
    ranking.gpkg/.csv, tasks.geojson, status.csv, per task an image chip and the model's
    buildings to correct in QGIS (GeoPackage) or JOSM (GeoJSON), and a README for annotators.

    Tiles the model already learnt from (finetune records them in the model) and tiles of
    --exclude batches are never proposed again."""
    from rscrisis.cli.console import print_json, progress_bar, say, verbosity
    from rscrisis.config import resolve
    from rscrisis.loop.export import rank

    level = verbosity(ctx, verbose, quiet)
    config = resolve(
        RankConfig,
        formula=formula.value,
        top=top,
        diversity=diversity.value,
        pool_factor=pool_factor,
        spacing=spacing,
        min_area=min_area,
        simplify=simplify,
        spatial=spatial,
        min_valid=min_valid,
        skip_empty=skip_empty,
        exclude=tuple(str(e) for e in exclude or ()),
        regularize=regularize,
        label_studio=label_studio,
        label_studio_prefix=label_studio_prefix,
        seed=seed,
    )
    with progress_bar("exporting tasks", enabled=level >= 0) as progress:
        result = rank(pred_set, out, config=config, overwrite=overwrite, progress=progress)
    if json_output:
        print_json(result.to_dict())
    skipped = ", ".join(f"{v} {k}" for k, v in result.excluded.items()) or "none"
    say(
        f"batch {out}: {result.tasks} tasks by {result.formula} from {result.candidates} "
        f"candidates (left out: {skipped})",
        level,
    )
