"""``rscrisis rank``: prediction set -> annotation batch for people."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.configured import Options, Spell, configured
from rscrisis.cli.options import JsonOutput, OutDir, Overwrite, Quiet, Verbose
from rscrisis.config import RankConfig
from rscrisis.loop.ranking import FORMULAS

_FORMULA_HELP = "Priority formula (higher = annotate first): " + "; ".join(
    f"{name}: {text}" for name, text in FORMULAS.items()
)


@configured(
    RankConfig,
    spell={
        "formula": Spell(help=_FORMULA_HELP),
        "top": Spell(decls=("--top", "-k")),
        "exclude": Spell(
            help="an earlier batch folder whose tiles are not proposed again (repeat)",
            metavar="BATCH",
        ),
    },
)
def rank_command(
    ctx: typer.Context,
    pred_set: Annotated[Path, typer.Argument(help="Prediction set (made by rscrisis predict).")],
    out: OutDir,
    options: Options,
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
    from rscrisis.loop.export import rank

    level = verbosity(ctx, verbose, quiet)
    config = options.resolve()
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
