"""``rscrisis finetune MODEL BATCH... --out MODEL2``: learn from corrected annotation batches.

Ingests the batches (:mod:`rscrisis.ingest`: every correction checked before anything is
written), then continues training from MODEL with the loop of :mod:`rscrisis.training`: a
smaller learning rate (``lr_scale`` x the starting model's), the first encoder stages frozen by
default (low-level filters transfer between areas; the few new tiles are better spent on the
rest), early stopping on a spatially held-out slice, and a *replay* of earlier labelled tiles so
the model does not forget the previous area or rounds: the batches the starting model learnt
from are replayed automatically, plus any ``--replay`` tile sets, at most ``replay_ratio`` tiles
per new tile.

The new model's metadata lists every batch it learnt from and every labelled tile id, so the
next ``rank`` leaves those tiles out and the loop can run round after round from a script.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rscrisis.batch import BatchLayout
from rscrisis.config import FinetuneConfig, TrainConfig
from rscrisis.errors import InputError, OutputExistsError
from rscrisis.progress import Progress, no_progress

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    model: str
    new_tiles: int
    replay_tiles: int
    batches: list[dict] = field(default_factory=list)
    train: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _replay_subsets(
    sources: list[Path], budget: int, exclude: set[str], work: Path, seed: int
) -> tuple[list[Path], int]:
    """Seeded sample of at most ``budget`` labelled tiles from ``sources`` (hard-linked)."""
    from rscrisis.tileset import read_index, write_subset

    pools = []
    for src in sources:
        index = read_index(src)
        if "mask" in index:
            index = index[index["mask"].notna()]
        ids = [t for t in index.tile_id if t not in exclude]
        pools.extend((src, t) for t in ids)
    if not pools or budget <= 0:
        return [], 0
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pools), size=min(budget, len(pools)), replace=False)
    by_source: dict[Path, list[str]] = {}
    for i in sorted(pick):
        src, t = pools[i]
        by_source.setdefault(src, []).append(t)
    subsets = []
    for n, (src, ids) in enumerate(by_source.items()):
        subsets.append(write_subset(src, work / f"replay-{n}", ids, overwrite=True))
    return subsets, len(pick)


def finetune_train_config(meta, config: FinetuneConfig) -> TrainConfig:
    """The training configuration of a fine-tuning run from a model with metadata ``meta``."""
    base_lr = meta.training.get("config", {}).get("lr", TrainConfig().lr)
    return TrainConfig(
        encoder=meta.encoder,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=base_lr * config.lr_scale,
        val_fraction=config.val_fraction,
        block_tiles=1,
        iou_loss_weight=config.iou_loss_weight,
        threshold=meta.threshold,
        patience=config.patience,
        seed=config.seed,
        device=config.device,
        augment=config.augment,
        freeze_encoder=config.freeze_encoder,
        freeze_stages=config.freeze_stages,
        transfer=config.transfer,
        freeze_transferred=config.freeze_transferred,
        freeze_norm=config.freeze_norm and config.transfer == "all",
        threads=config.threads,
        max_minutes=config.max_minutes,
    )


def finetune(
    model_path: str | Path,
    batches: list[str | Path],
    out: str | Path,
    *,
    config: FinetuneConfig | None = None,
    labels_file: str | Path | None = None,
    overwrite: bool = False,
    progress: Progress = no_progress,
) -> FinetuneResult:
    """Ingest corrected batches and fine-tune ``model_path`` on them into ``out``."""
    from rscrisis.ingest import ingest
    from rscrisis.model import read_meta
    from rscrisis.tileset import read_index
    from rscrisis.training import sidecar, train

    config = config or FinetuneConfig()
    out = Path(out)
    if out.suffix != ".safetensors":
        raise InputError("the model file name must end in .safetensors", path=out)
    if out.exists() and not overwrite:
        raise OutputExistsError(
            "exists", path=out, hint="pass --overwrite to replace it or choose another --out"
        )
    meta = read_meta(model_path)
    batches = [Path(b) for b in batches]
    # read first: a clear error for a folder that is not a batch, before anything is written
    manifests = {b: BatchLayout(b).read_manifest() for b in batches}
    reports = ingest(batches, labels_file=labels_file, repair=config.repair)

    new_sets, new_ids, batch_records = [], set(), []
    for b, report in zip(batches, reports, strict=True):
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
    replay_sources = [Path(r) for r in config.replay]
    for rec in earlier:
        if Path(rec["labels"]).exists():
            replay_sources.append(Path(rec["labels"]))
        else:
            log.warning("earlier batch labels %s are gone; not replayed", rec["labels"])
    work = sidecar(out, ".replay")
    budget = round(len(new_ids) * config.replay_ratio)
    replay_sets, n_replay = _replay_subsets(replay_sources, budget, new_ids, work, config.seed)
    train_config = finetune_train_config(meta, config)
    labelled = sorted(set(meta.training.get("labelled_tiles", [])) | new_ids)
    try:
        result = train(
            new_sets + replay_sets,
            out,
            config=train_config,
            init=model_path,
            overwrite=overwrite,
            progress=progress,
            extra_training_meta={
                "finetune": {
                    "config": config.model_dump(mode="json"),
                    "from_model": str(model_path),
                    "new_tiles": len(new_ids),
                    "replay_tiles": n_replay,
                    "replay_sources": [str(s) for s in replay_sources],
                },
                "batches": earlier + batch_records,
                "labelled_tiles": labelled,
            },
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return FinetuneResult(
        model=str(out),
        new_tiles=len(new_ids),
        replay_tiles=n_replay,
        batches=[r.to_dict() for r in reports],
        train=result.to_dict(),
    )
