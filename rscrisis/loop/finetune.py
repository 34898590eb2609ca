"""``rscrisis finetune MODEL BATCH... --out MODEL2``: learn from corrected annotation batches.

Ingests the batches (:mod:`rscrisis.loop.ingest`: every correction checked before anything is
written), then adapts MODEL to them with :func:`finetune_tilesets`, the one fine-tuning path,
shared with ``rscrisis simulate``:

* **A budget of optimisation steps, not epochs** (``steps``): every step draws a batch with
  replacement, so 5 tiles get as much optimisation as 50. Each batch mixes ``replay_ratio``
  replayed tiles per new tile: the labels of batches the starting model learnt from, its own
  (pre)training tile sets when they are still on disk (with their labels, or with
  ``replay_targets="model"`` the starting model's own map of them: :func:`model_targets`),
  and any ``--replay`` tile sets. New
  tiles without any building get at most ``max_empty_share`` of the draws when others hold
  buildings, and Dice is not applied to a batch without a building pixel: a batch of fields
  and water cannot teach the model that nothing is a building.
* **The weights kept** are an exponential moving average over the steps (``ema``), with the
  first encoder stage and the batch-norm statistics frozen, at ``lr_scale`` x the starting
  model's learning rate. README ("Fine-tuning on a few tiles") gives the measurements behind
  each default.
* **Do no harm.** A spatially held-out slice of the new tiles (``val_fraction``) is used only
  when it can be trusted: at least ``min_val_tiles`` tiles, two of them with buildings.
  The starting model is scored on it before the first step and stays in the running for
  "best"; if nothing beats it, the starting weights are kept. A smaller slice would be noise
  (one tile decides), so then every tile trains and the budget is fixed; the before -> after
  figures are then reported on the labelled tiles themselves, and said to be so.
* **Predicted IoU that holds here.** Before training, the starting model predicts the new
  tiles; with the corrections this gives the true IoU of its own pre-annotations. Those
  samples, added to those of earlier rounds, refit the IoU calibrator
  (:mod:`rscrisis.ml.calibration`) stored in the new model, which ``predict`` and ``rank`` use.

The new model's metadata lists every batch it learnt from and every labelled tile id, so the
next ``rank`` leaves those tiles out and the loop can run round after round from a script.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rscrisis import __version__
from rscrisis.config import FinetuneConfig
from rscrisis.io.batch import BatchLayout
from rscrisis.ml.data import (
    present_pretraining_tilesets,
    pretraining_tilesets,
    replay_dataset,
    spatial_split,
)
from rscrisis.progress import Progress, no_progress

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    model: str
    new_tiles: int
    replay_tiles: int
    batches: list[dict] = field(default_factory=list)
    train: dict = field(default_factory=dict)
    check: dict = field(default_factory=dict)
    improved: bool | None = None
    warning: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def replay_sources_of(meta, config: FinetuneConfig, extra: list[Path]) -> list[Path]:
    """The tile sets a fine-tuning of the model ``meta`` replays (module docstring)."""
    sources = [Path(r) for r in config.replay] + list(extra)
    for rec in meta.training.get("batches", []):
        if Path(rec["labels"]).exists():
            sources.append(Path(rec["labels"]))
        else:
            log.warning("earlier batch labels %s are gone; not replayed", rec["labels"])
    if config.replay_pretraining:
        sources += present_pretraining_tilesets(meta.training)
    unique: dict[str, Path] = {}
    for s in sources:
        unique.setdefault(str(s.resolve()), s)
    return list(unique.values())


def measure_samples(model_path: Path, tilesets: list[Path], threads: int | None) -> list[dict]:
    """Calibration samples: the model's statistics and the true IoU of its prediction on each
    labelled tile (rscrisis.ml.calibration)."""
    from rscrisis.config import PredictConfig
    from rscrisis.ml.calibration import SAMPLE_KEYS
    from rscrisis.predict.evaluate import evaluate

    # predict's defaults (the 8 views), so that the samples measure what rank will rank by
    ev = evaluate(model_path, tilesets, config=PredictConfig(threads=threads, batch_size=16))
    return [{k: r[k] for k in SAMPLE_KEYS if k in r} for r in ev.per_tile]


def distilled_sets(sources: Sequence[Path], pretraining: Sequence[Path]) -> list[Path]:
    """The replayed ``sources`` that ``replay_targets="model"`` replays with the starting
    model's map: the model's own (pre)training tile sets, however they reach the replay."""
    own = {Path(p).resolve() for p in pretraining}
    return [s for s in sources if Path(s).resolve() in own]


def model_targets(
    model_path: Path, tilesets: Sequence[Path], cache: Path, threads: int | None
) -> dict[Path, Path]:
    """The starting model's own map of each tile set in ``tilesets``: for each, a folder of
    masks named as the set's, 1 where the model sees a building, 0 elsewhere and
    :data:`~rscrisis.io.tileset.MASK_IGNORE` where the tile or its label has no data. They are
    predicted as ``predict`` does (the 8 views) and kept in ``cache`` under the model file's
    digest: a simulation's rounds share their starting model, and predict each set once.

    Replaying these instead of the sets' labels (``replay_targets="model"``) keeps what the
    model knew without learning the labels' noise again: a model pretrained with the robust
    loss on OSM footprints has learnt around the buildings OSM misses, and replaying those
    labels with fine-tuning's plain loss teaches it that they are background. It also holds
    the model to what it did there, which costs a model new to the area part of its gain, so
    it is not the default; README ("Why a round loses") gives the measurements."""
    import hashlib
    import shutil

    import rasterio
    import torch

    from rscrisis.config import PredictConfig
    from rscrisis.io.raster import one_band_profile, read_raster
    from rscrisis.io.tileset import MASK_IGNORE
    from rscrisis.ml.data import load_tiles
    from rscrisis.ml.model import read_meta
    from rscrisis.predict.tiles import PROBS, predict_tiles, read_prob

    digest = hashlib.sha256()
    with open(model_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    threshold = read_meta(model_path).threshold
    out: dict[Path, Path] = {}
    for tileset in tilesets:
        key = hashlib.sha256(f"{digest.hexdigest()}:{Path(tileset).resolve()}".encode())
        folder = cache / key.hexdigest()[:16]
        if not (folder / "masks").is_dir():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache, prefix=".partial-") as tmp:
                work = Path(tmp)
                # predict seeds torch's generator; the fine-tuning after this must draw the
                # same numbers whether the maps were made here or found in the cache
                with torch.random.fork_rng(devices=[]):
                    predict_tiles(
                        model_path,
                        [tileset],
                        work / "pred",
                        config=PredictConfig(threads=threads, batch_size=16),
                    )
                (work / "map" / "masks").mkdir(parents=True)
                frame = load_tiles([tileset], need_masks=True).frame
                for tid, mask_path in zip(frame.tile_id, frame.mask_path, strict=True):
                    prob, valid = read_prob(work / "pred" / PROBS / f"{tid}.tif")
                    with read_raster(mask_path) as ds:
                        label = ds.read(1)
                        profile = one_band_profile(ds, MASK_IGNORE)
                    target = np.where(prob > threshold, 1, 0).astype(np.uint8)
                    target[~valid | (label == MASK_IGNORE)] = MASK_IGNORE
                    name = work / "map" / "masks" / Path(mask_path).name
                    with rasterio.open(name, "w", **profile) as dst:
                        dst.write(target, 1)
                (work / "map" / "source.txt").write_text(f"{Path(tileset).resolve()}\n")
                try:
                    (work / "map").rename(folder)
                except OSError:  # another process made it first: the same map
                    shutil.rmtree(work / "map", ignore_errors=True)
        out[Path(tileset)] = folder / "masks"
    return out


def held_out_slice(
    frame, has_buildings: np.ndarray, config: FinetuneConfig
) -> tuple[np.ndarray, np.ndarray, str]:
    """(train, held-out, what the check is on): a spatial slice is held out only when it can be
    trusted, with at least ``min_val_tiles`` tiles, two of them with buildings (module
    docstring); otherwise every tile trains and the check is on the training tiles."""
    if config.val_fraction > 0 and len(frame) > 1:
        t_idx, v_idx, _ = spatial_split(frame, config.val_fraction, 1, config.seed)
        if len(v_idx) >= config.min_val_tiles and has_buildings[v_idx].sum() >= 2:
            return t_idx, v_idx, "held-out slice"
    return (
        np.arange(len(frame)),
        np.array([], int),
        f"the labelled tiles themselves (training data: a held-out slice needs at least "
        f"{config.min_val_tiles} tiles, two with buildings)",
    )


def _warning(
    chosen: str,
    trusted: bool,
    val_tiles: int,
    check_on: str,
    before: float | None,
    after: float | None,
    has_buildings: np.ndarray,
    new_tiles: int,
) -> str | None:
    """What a user must hear about a round: the start was kept, the model got worse where it
    was checked, or no new tile held a building (logged as a warning too)."""
    warning = None
    if trusted and chosen == "start":
        warning = (
            f"fine-tuning did not beat the starting model on the held-out slice "
            f"({val_tiles} tiles, IoU {before:.3f}): the starting weights were kept"
        )
    elif before is not None and after is not None and not after > before:
        warning = (
            f"the new model is not better on {check_on} (IoU {before:.3f} -> {after:.3f}): "
            "check the corrections"
        )
    if not has_buildings.any():
        empty_note = (
            f"none of the {new_tiles} new tiles holds a building: the model can only "
            "learn what is not a building here (replay keeps what it knew); label tiles with "
            "buildings next"
        )
        warning = f"{warning}; {empty_note}" if warning else empty_note
    if warning:
        log.warning(warning)
    return warning


def kept_share(config: FinetuneConfig, tiles: int) -> float:
    """How far from the starting model towards the fine-tuned one the kept weights lie:
    ``interpolate``, or with ``prior_tiles`` N the share n / (n + N) of ``tiles`` n, as if the
    start were worth N labelled tiles (the more tiles, the more the fit is trusted)."""
    if config.prior_tiles > 0:
        return tiles / (tiles + config.prior_tiles)
    return config.interpolate


def _offset_progress(progress: Progress, offset: int, overall: int, stage: str = "") -> Progress:
    """``progress`` for a stage that starts after ``offset`` of ``overall`` steps."""

    def report(done: int, total: int, description: str = "") -> None:
        progress(offset + done, overall, f"{stage}{description}")

    return report


def fold_of(has_buildings: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold (0..folds-1) of each tile, stratified: tiles with buildings and tiles without are
    each dealt out in turn, in a seeded random order, so every fold gets its share of both."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(has_buildings), int)
    dealt = 0
    for group in (np.flatnonzero(has_buildings), np.flatnonzero(~has_buildings)):
        group = rng.permutation(group)
        out[group] = (dealt + np.arange(len(group))) % folds
        dealt += len(group)
    return out


def cross_fit_interpolation(
    model,
    meta,
    dataset,
    train_idx: np.ndarray,
    has_buildings: np.ndarray,
    plan,
    *,
    folds: int,
    augment: bool,
    frozen,
    freeze_norm: bool,
    replay,
    device,
    tile_size: int,
    progress: Progress = no_progress,
) -> dict:
    """How far to move from the starting model (``interpolate``), chosen by K-fold cross-fitting
    over the labelled tiles: for each fold, fine-tune the start with ``plan`` on the other folds
    and score the weights at each of :data:`~rscrisis.ml.training.INTERPOLATION_GRID` on that
    fold's tiles, which the fit did not see. The pixel counts are pooled over the folds; the
    best share wins (the larger on a tie). ``model`` ends with its starting weights, and the
    random streams (torch's, NumPy's, Python's, the replay tiles' augmentation) where they
    were, so the final fit is exactly the one a run without folds makes.

    A few tiles cannot hold out a slice worth trusting (held_out_slice), but every tile can be
    held out once: this is the "k-fold over the labelled tiles" rule for small batches. Each
    fold's fit sees (K-1)/K of the tiles, so the choice leans towards the start, the safe side.
    """
    from dataclasses import replace

    import torch

    from rscrisis.ml.metrics import Confusion
    from rscrisis.ml.training import (
        INTERPOLATION_GRID,
        fit_steps,
        path_confusions,
        random_streams,
        restore_random_streams,
    )

    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    replay_augment = getattr(replay, "augment", None)
    torch_stream, streams = torch.get_rng_state(), random_streams(replay_augment)
    assignment = fold_of(has_buildings[train_idx], folds, plan.seed)
    pooled = {alpha: Confusion() for alpha in INTERPOLATION_GRID}
    total = (folds + 1) * plan.steps
    for k in range(folds):
        fit_idx, held_idx = train_idx[assignment != k], train_idx[assignment == k]
        model.load_state_dict(start)
        fit_steps(
            model,
            meta,
            dataset(fit_idx, augment),
            has_buildings[fit_idx],
            replace(plan, interpolate=1.0, seed=plan.seed + 1 + k),
            frozen=frozen,
            freeze_norm=freeze_norm,
            replay=replay,
            device=device,
            tile_size=tile_size,
            progress=_offset_progress(
                progress, k * plan.steps, total, f"cross-fitting fold {k + 1}/{folds}: "
            ),
        )
        fitted = {name: v.detach().clone() for name, v in model.state_dict().items()}
        scores = path_confusions(
            model,
            start,
            fitted,
            dataset(held_idx, False),
            device=device,
            threshold=meta.threshold,
            precision=plan.precision,
            batch_size=plan.batch_size,
        )
        for alpha, conf in scores.items():
            pooled[alpha] += conf
    model.load_state_dict(start)
    torch.set_rng_state(torch_stream)
    restore_random_streams(streams, replay_augment)
    ious = {alpha: round(conf.scores()["iou"], 5) for alpha, conf in pooled.items()}
    chosen = max(INTERPOLATION_GRID, key=lambda a: (ious[a], a))
    log.info("cross-fitting (%d folds): IoU by interpolation %s: chose %s", folds, ious, chosen)
    return {
        "folds": folds,
        "tiles": len(train_idx),
        "iou": {str(a): v for a, v in ious.items()},
        "chosen": chosen,
    }


def finetune_tilesets(
    model_path: str | Path,
    new_sets: list[Path],
    out: str | Path,
    *,
    config: FinetuneConfig,
    samples: list[dict] | None = None,
    extra_replay: Sequence[Path] = (),
    extra_training_meta: dict | None = None,
    overwrite: bool = False,
    progress: Progress = no_progress,
    replay_targets_cache: Path | None = None,
) -> FinetuneResult:
    """Adapt ``model_path`` to the labelled tile sets ``new_sets`` (see the module docstring).

    ``samples`` are the calibration samples of the new tiles (measured here with the starting
    model when None: right when it made the batch, as in ``finetune``; ``simulate`` passes the
    samples of the model that chose the tiles). ``replay_targets_cache``: where
    :func:`model_targets` keeps the starting model's maps of the replayed pretraining sets
    (``replay_targets="model"``; default: a temporary folder beside ``out``).
    """
    import torch

    from rscrisis.io.outputs import write_json_atomic
    from rscrisis.ml.calibration import fit, merge_samples
    from rscrisis.ml.data import TileDataset, augmentation, load_tiles
    from rscrisis.ml.device import resolve_device, seed_everything
    from rscrisis.ml.losses import LossOptions
    from rscrisis.ml.model import check_bands, check_model_out, load_model, save_model
    from rscrisis.ml.training import StepPlan, _freeze, _transfer, fit_steps, sidecar, training_lr

    out = check_model_out(out, overwrite)
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    model, meta = load_model(model_path)
    table = load_tiles(new_sets, need_masks=True)
    check_bands(meta, table.band_count, new_sets[0])
    frame = table.frame.reset_index(drop=True)
    new_ids = set(frame.tile_id)
    if samples is None:
        samples = measure_samples(Path(model_path), new_sets, config.threads)
    has = {s["tile_id"]: bool(s["has_buildings"]) for s in samples}
    if not set(has) >= new_ids:  # samples from elsewhere: measure what the masks say
        for s in measure_samples(Path(model_path), new_sets, config.threads):
            has.setdefault(s["tile_id"], bool(s["has_buildings"]))
    has_buildings = np.array([has[t] for t in frame.tile_id])

    train_idx, val_idx, check_on = held_out_slice(frame, has_buildings, config)
    trusted = len(val_idx) > 0
    check_idx = val_idx if trusted else train_idx
    replay_sources = replay_sources_of(meta, config, list(extra_replay))
    pretraining = present_pretraining_tilesets(meta.training)
    # the starting model's maps of the replayed pretraining sets live only as long as training
    with contextlib.ExitStack() as stack:
        replay_ds, targets = None, None
        if config.replay_ratio > 0:
            if config.replay_targets == "model":
                if replay_targets_cache is None:  # beside the output, for this fine-tuning
                    out.parent.mkdir(parents=True, exist_ok=True)
                    replay_targets_cache = Path(
                        stack.enter_context(
                            tempfile.TemporaryDirectory(dir=out.parent, prefix=".rscrisis-replay-")
                        )
                    )
                targets = model_targets(
                    Path(model_path),
                    distilled_sets(replay_sources, pretraining),
                    replay_targets_cache,
                    config.threads,
                )
            replay_ds = replay_dataset(
                replay_sources,
                meta,
                new_ids,
                config.seed,
                config.augment,
                source_domain=pretraining if config.replay_norm == "source" else (),
                targets=targets,
            )
        n_replay_tiles = 0 if replay_ds is None else len(replay_ds)

        def dataset(idx, aug):
            rows = frame.iloc[idx]
            return TileDataset(
                rows.image_path,
                rows.mask_path,
                meta.mean,
                meta.std,
                table.dtype,
                augment=augmentation(config.seed) if aug else None,
            )

        if config.transfer != "all":
            model = _transfer(model, meta, config.transfer)
        model.to(device)
        frozen = _freeze(model, config)
        base_lr = training_lr(meta)
        cross = None
        plan = StepPlan(
            steps=config.steps,
            batch_size=config.batch_size,
            lr=base_lr * config.lr_scale,
            replay_ratio=config.replay_ratio,
            max_empty_share=config.max_empty_share,
            ema=config.ema,
            eval_every=config.eval_every,
            iou_loss_weight=config.iou_loss_weight,
            seed=config.seed,
            precision=config.precision,
            replay_norm=config.replay_norm,
            loss=LossOptions.of(config),
            # a re-initialised head has no starting weights worth going back to
            interpolate=kept_share(config, len(train_idx)) if config.transfer == "all" else 1.0,
        )
        folds = config.interpolate_folds
        if folds and not trusted and config.transfer == "all" and len(train_idx) >= folds:
            cross = cross_fit_interpolation(
                model,
                meta,
                dataset,
                train_idx,
                has_buildings,
                plan,
                folds=folds,
                augment=config.augment,
                frozen=frozen,
                freeze_norm=config.freeze_norm,
                replay=replay_ds,
                device=device,
                tile_size=table.tile_size,
                progress=progress,
            )
            plan.interpolate = cross["chosen"]
            progress = _offset_progress(progress, folds * config.steps, (folds + 1) * config.steps)
        fitted = fit_steps(
            model,
            meta,
            dataset(train_idx, config.augment),
            has_buildings[train_idx],
            plan,
            frozen=frozen,
            freeze_norm=config.freeze_norm and config.transfer == "all",
            replay=replay_ds,
            check=dataset(check_idx, False),
            select_on_check=trusted,
            device=device,
            tile_size=table.tile_size,
            progress=progress,
        )

    before, after = fitted.before.get("val_iou"), fitted.after.get("val_iou")
    improved = None if before is None or after is None else bool(after > before)
    warning = _warning(
        fitted.chosen, trusted, len(val_idx), check_on, before, after, has_buildings, len(new_ids)
    )
    if cross is not None and cross["chosen"] == 0:
        kept = (
            f"cross-fitting over the {len(train_idx)} labelled tiles ({folds} folds) scored "
            "the starting model above every fine-tuning: the starting weights were kept"
        )
        log.warning(kept)
        warning = f"{kept}; {warning}" if warning else kept
    all_samples = merge_samples(meta.training.get("calibration_samples", []), samples)
    calibrator = fit(all_samples, meta.threshold) if config.calibrate else None
    check = {
        "on": check_on,
        "tiles": len(check_idx),
        "trusted": trusted,
        "before": fitted.before,
        "after": fitted.after,
        "chosen": fitted.chosen,
        "interpolate": plan.interpolate,
    }
    if cross is not None:
        check["cross_fit"] = cross
    previous = dict(meta.training)
    meta.history = list(meta.history) + fitted.history
    meta.training = {
        "tilesets": [str(t) for t in new_sets],
        "config": {**previous.get("config", {}), "lr": base_lr},
        "init": str(model_path),
        "pretraining_tilesets": pretraining_tilesets(previous),
        "labelled_tiles": sorted(set(previous.get("labelled_tiles", [])) | new_ids),
        "batches": list(previous.get("batches", [])),
        "finetune": {
            "config": config.model_dump(mode="json"),
            "from_model": str(model_path),
            "new_tiles": len(new_ids),
            "train_tiles": len(train_idx),
            "replay_tiles": n_replay_tiles,
            "replay_sources": [str(s) for s in replay_sources],
            "new_draws": fitted.new_draws,
            "replay_draws": fitted.replay_draws,
            "check": check,
        },
        "calibration_samples": all_samples,
        "iou_calibrator": None if calibrator is None else calibrator.to_dict(),
        "rscrisis_version": __version__,
        **(extra_training_meta or {}),
        "previous": {k: v for k, v in previous.items() if k != "calibration_samples"},
    }
    if calibrator is None:
        meta.training.pop("iou_calibrator")
    save_model(model, meta, out)
    result = FinetuneResult(
        model=str(out),
        new_tiles=len(new_ids),
        replay_tiles=n_replay_tiles,
        train={
            "steps": config.steps,
            "train_tiles": len(train_idx),
            "val_tiles": len(val_idx),
            "images_per_s": fitted.images_per_s,
            "history": fitted.history,
            "device": str(device),
        },
        check=check,
        improved=improved,
        warning=warning,
    )
    write_json_atomic(
        sidecar(out, ".finetune.json"),
        {
            "kind": "rscrisis.finetune",
            "rscrisis_version": __version__,
            "model": str(model_path),
            "tilesets": [str(t) for t in new_sets],
            "config": config.model_dump(mode="json"),
            "result": result.to_dict(),
        },
    )
    return result


def finetune(
    model_path: str | Path,
    batches: Sequence[str | Path],
    out: str | Path,
    *,
    config: FinetuneConfig | None = None,
    labels_file: str | Path | None = None,
    labels_layer: str | None = None,
    overwrite: bool = False,
    progress: Progress = no_progress,
) -> FinetuneResult:
    """Ingest corrected batches and fine-tune ``model_path`` on them into ``out``."""
    from rscrisis.io.tileset import read_index
    from rscrisis.loop.ingest import ingest
    from rscrisis.ml.model import read_meta

    config = config or FinetuneConfig()
    from rscrisis.ml.model import check_model_out

    check_model_out(out, overwrite)  # before anything is written
    meta = read_meta(model_path)
    folders = [Path(b) for b in batches]
    # read first: a clear error for a folder that is not a batch, before anything is written
    manifests = {b: BatchLayout(b).read_manifest() for b in folders}
    reports = ingest(
        folders, labels_file=labels_file, labels_layer=labels_layer, repair=config.repair
    )

    new_sets, new_ids, batch_records = [], set(), []
    for b, report in zip(folders, reports, strict=True):
        if not report.labels:
            continue
        labels = Path(report.labels)
        ids = list(read_index(labels).tile_id)
        new_sets.append(labels)
        new_ids |= set(ids)
        manifest = manifests[b]
        batch_records.append(
            {
                "batch": str(b.resolve()),
                "labels": str(labels.resolve()),
                "formula": manifest.get("config", {}).get("formula"),
                "diversity": manifest.get("config", {}).get("diversity"),
                "tasks": report.taken,
                "tile_ids": ids,
                "refused": report.refused,
            }
        )
    earlier = [
        rec
        for rec in meta.training.get("batches", [])
        if rec.get("batch") not in {r["batch"] for r in batch_records}
    ]
    labelled = sorted(set(meta.training.get("labelled_tiles", [])) | new_ids)
    result = finetune_tilesets(
        model_path,
        new_sets,
        out,
        config=config,
        overwrite=overwrite,
        progress=progress,
        extra_training_meta={"batches": earlier + batch_records, "labelled_tiles": labelled},
    )
    result.batches = [r.to_dict() for r in reports]
    return result
