"""``rscrisis simulate``: replay the annotation loop with an oracle, formula against formula."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.options import (
    JsonOutput,
    ModelPath,
    OutDir,
    Overwrite,
    Quiet,
    Resume,
    Threads,
    Verbose,
    choice_enum,
    default,
    describe,
)
from rscrisis.config import AdaptConfig, AdaptMethod, FinetuneConfig, SimulateConfig, SplitName

S = SimulateConfig
SplitChoice = choice_enum("SplitChoice", SplitName)
MethodChoice = choice_enum("MethodChoice", AdaptMethod)
F = FinetuneConfig


def _csv(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def simulate_command(
    ctx: typer.Context,
    model: ModelPath,
    tileset: Annotated[Path, typer.Argument(help="A fully labelled tile set (the oracle).")],
    out: OutDir,
    formulas: Annotated[str, typer.Option(help=describe(S, "formulas") + " (comma-separated)")] = (
        ",".join(default(S, "formulas"))
    ),
    rounds: Annotated[int, typer.Option(help=describe(S, "rounds"))] = default(S, "rounds"),
    batch: Annotated[int, typer.Option(help=describe(S, "batch"))] = default(S, "batch"),
    seed_batch: Annotated[int, typer.Option(help=describe(S, "seed_batch"))] = default(
        S, "seed_batch"
    ),
    seeds: Annotated[str, typer.Option(help=describe(S, "seeds") + " (comma-separated)")] = (
        ",".join(str(s) for s in default(S, "seeds"))
    ),
    test_fraction: Annotated[float, typer.Option(help=describe(S, "test_fraction"))] = default(
        S, "test_fraction"
    ),
    split: Annotated[SplitChoice, typer.Option(help=describe(S, "split"))] = default(S, "split"),
    split_seed: Annotated[int, typer.Option(help=describe(S, "split_seed"))] = default(
        S, "split_seed"
    ),
    block_tiles: Annotated[int, typer.Option(help=describe(S, "block_tiles"))] = default(
        S, "block_tiles"
    ),
    spatial: Annotated[
        bool, typer.Option("--spatial/--no-spatial", help=describe(S, "spatial"))
    ] = default(S, "spatial"),
    mc_samples: Annotated[int, typer.Option(help=describe(S, "mc_samples"))] = default(
        S, "mc_samples"
    ),
    ceiling: Annotated[
        bool, typer.Option("--ceiling/--no-ceiling", help=describe(S, "ceiling"))
    ] = default(S, "ceiling"),
    adapt: Annotated[
        list[MethodChoice] | None,
        typer.Option(
            help=describe(S, "adapt") + ". Repeat for several methods (rscrisis adapt's "
            "defaults otherwise)."
        ),
    ] = None,
    steps: Annotated[
        int, typer.Option(help="Fine-tuning each round: " + describe(F, "steps"))
    ] = default(F, "steps"),
    ema: Annotated[float, typer.Option(help=describe(F, "ema"))] = default(F, "ema"),
    replay_ratio: Annotated[float, typer.Option(help=describe(F, "replay_ratio"))] = default(
        F, "replay_ratio"
    ),
    lr_scale: Annotated[float, typer.Option(help=describe(F, "lr_scale"))] = default(F, "lr_scale"),
    freeze_stages: Annotated[int, typer.Option(help=describe(F, "freeze_stages"))] = default(
        F, "freeze_stages"
    ),
    batch_size: Annotated[int, typer.Option(help=describe(F, "batch_size"))] = default(
        F, "batch_size"
    ),
    threads: Threads = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Replay the annotation loop on a fully labelled tile set with an oracle: a spatial
    pool/test split, a random seed batch shared by all formulas, then per formula ROUNDS of
    predict -> rank -> reveal K labels -> fine-tune -> evaluate on the test area, for several
    seeds. Writes curves.csv, summary.csv (area under the IoU curve per formula, spread over
    seeds, wins and IoU gain against random) and curves.png. --resume continues a killed run."""
    from rscrisis.cli.console import print_json, progress_bar, say, verbosity
    from rscrisis.config import resolve
    from rscrisis.loop.simulate import simulate

    level = verbosity(ctx, verbose, quiet)
    try:
        seed_values = tuple(int(s) for s in _csv(seeds))
    except ValueError as exc:
        raise typer.BadParameter(f"expected integers, got {seeds!r}", param_hint="--seeds") from exc
    finetune = resolve(
        FinetuneConfig,
        steps=steps,
        ema=ema,
        replay_ratio=replay_ratio,
        lr_scale=lr_scale,
        freeze_stages=freeze_stages,
        batch_size=batch_size,
        threads=threads,
        val_fraction=0.0,
    )
    config = resolve(
        SimulateConfig,
        formulas=_csv(formulas),
        rounds=rounds,
        batch=batch,
        seed_batch=seed_batch,
        seeds=seed_values,
        test_fraction=test_fraction,
        split=getattr(split, "value", split),
        split_seed=split_seed,
        block_tiles=block_tiles,
        spatial=spatial,
        mc_samples=mc_samples,
        ceiling=ceiling,
        finetune=finetune,
        adapt=resolve(AdaptConfig, methods=tuple(getattr(m, "value", m) for m in adapt))
        if adapt
        else None,
    )
    with progress_bar("simulating", enabled=level >= 0) as progress:
        result = simulate(
            model,
            tileset,
            out,
            config=config,
            overwrite=overwrite,
            resume=resume,
            progress=progress,
        )
    if json_output:
        print_json(result.to_dict())
    frame = []
    if result.start:
        frame.append(f"start {result.start['test_iou']:.3f} at 0 labels")
    if result.ceiling:
        frame.append(
            f"ceiling {result.ceiling['test_iou']:.3f} at {result.ceiling['labelled']} labels"
        )
    lines = [f"simulation in {out}: {result.runs} rounds run; " + ", ".join(frame)]
    for r in result.summary:
        last = max((k for k in r if k.startswith("iou_at_")), key=lambda k: int(k[7:]))
        gap = r.get("gap_closed_" + last[4:])
        lines.append(
            f"  {r['formula']}: AUC {r['auc_mean']:.3f} ± {r['auc_std']:.3f}, IoU {r[last]:.3f} "
            f"at {last[7:]} labels"
            + (f" ({gap:.0%} of the gap)" if gap is not None else "")
            + (
                f", beats random in {r['beats_random_seeds']} seeds"
                if "beats_random_seeds" in r
                else ""
            )
        )
    say("\n".join(lines), level)
