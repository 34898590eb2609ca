"""``rscrisis evaluate``: pixel and object metrics and predicted-IoU calibration on tile sets.

Reports, over the labelled tiles (255 = ignore excluded everywhere, see rscrisis.ml.metrics):
pixel IoU / F1 / precision / recall, object-level precision / recall / F1 at IoU >= 0.5
(SpaceNet style, per tile: a building cut by a tile border counts in each tile), and how well the
IoU head ranks and estimates the true per-tile IoU (Spearman rho, MAE). The training-free
``soft_iou`` estimate is calibrated the same way, as the baseline the head must beat.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rscrisis import __version__
from rscrisis.config import PredictConfig
from rscrisis.io.outputs import (
    claim_output_dir,
    guard_output_dir,
    write_csv_atomic,
    write_json_atomic,
)
from rscrisis.ml.metrics import (
    Confusion,
    ObjectCounts,
    calibration,
    confusion,
    object_counts,
    tile_iou,
)
from rscrisis.progress import Progress, no_progress

CALIBRATION = "calibration.png"
PRODUCTS = ("evaluation.json", "per_tile.csv", CALIBRATION)


@dataclass
class EvalResult:
    model: str
    tiles: int
    pixel: dict
    objects: dict
    pred_iou_calibration: dict
    soft_iou_calibration: dict
    mean_tile_iou: float
    seconds: float
    per_tile: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self, with_tiles: bool = False) -> dict:
        d = asdict(self)
        if not with_tiles:
            d.pop("per_tile")
        return d


def evaluate(
    model_path: str | Path,
    tilesets: Sequence[str | Path],
    *,
    out: str | Path | None = None,
    config: PredictConfig | None = None,
    overwrite: bool = False,
    min_object_px: int = 16,
    progress: Progress = no_progress,
) -> EvalResult:
    """Evaluate a model on labelled tile sets; with ``out``, write JSON + per-tile CSV."""
    import torch

    from rscrisis.ml.device import autocast_dtype
    from rscrisis.predict.tiles import prepare, run_model

    config = config or PredictConfig()
    if out is not None:
        guard_output_dir(Path(out), PRODUCTS, overwrite=overwrite, resume=False)
    if config.threads:
        torch.set_num_threads(config.threads)
    model, meta, table, loader, device = prepare(
        model_path, tilesets, config.batch_size, config.device, need_masks=True
    )
    frame = table.frame
    amp = autocast_dtype(device, "auto")
    pix = Confusion()
    objs = ObjectCounts()
    rows = []
    t0 = time.perf_counter()
    i = 0
    for batch in run_model(model, loader, device, amp, tta=config.tta):
        for b in range(len(batch.pred_iou)):
            truth = batch.mask[b]
            pred = batch.prob[b] > meta.threshold
            c = confusion(pred, truth)
            pix += c
            o = object_counts(pred, truth, min_area_px=min_object_px)
            objs += o
            rec = frame.iloc[i]
            views: dict[str, float] = {  # with the 8 views (PredictConfig.tta)
                k: float(batch.stats[k][b])
                for k in ("tta_agreement", "tta_spread")
                if k in batch.stats
            }
            rows.append(
                {
                    "tile_id": rec.tile_id,
                    "scene": rec.scene,
                    "true_iou": tile_iou(pred, truth),
                    "pred_iou": float(batch.pred_iou[b]),
                    "soft_iou": float(batch.stats["soft_iou"][b]),
                    "mean_entropy": float(batch.stats["mean_entropy"][b]),
                    "max_prob": float(batch.stats["max_prob"][b]),
                    "mean_prob": float(batch.stats["mean_prob"][b]),
                    "building_fraction": float(batch.stats["building_fraction"][b]),
                    **views,
                    "has_buildings": bool(c.tp + c.fn > 0),
                    "tp": c.tp,
                    "fp": c.fp,
                    "fn": c.fn,
                    "objects_tp": o.tp,
                    "objects_fp": o.fp,
                    "objects_fn": o.fn,
                }
            )
            i += 1
        progress(i, len(frame))
    true = np.array([r["true_iou"] for r in rows])
    result = EvalResult(
        model=str(model_path),
        tiles=len(rows),
        pixel=pix.scores(),
        objects=objs.scores(),
        pred_iou_calibration=calibration(np.array([r["pred_iou"] for r in rows]), true),
        soft_iou_calibration=calibration(np.array([r["soft_iou"] for r in rows]), true),
        mean_tile_iou=float(np.nanmean(true)) if np.isfinite(true).any() else math.nan,
        seconds=round(time.perf_counter() - t0, 2),
        per_tile=rows,
    )
    if out is not None:
        out = Path(out)
        with claim_output_dir(out, PRODUCTS, overwrite=overwrite):
            write_csv_atomic(out / "per_tile.csv", rows)
            from rscrisis.io.pictures import calibration_plot

            calibration_plot(
                rows,
                {"pred_iou": result.pred_iou_calibration, "soft_iou": result.soft_iou_calibration},
                out / CALIBRATION,
                f"{Path(model_path).name} on {len(rows)} tiles: predicted against true IoU",
            )
            write_json_atomic(
                out / "evaluation.json",
                {
                    "kind": "rscrisis.evaluation",
                    "rscrisis_version": __version__,
                    "tilesets": [str(t) for t in tilesets],
                    "config": config.model_dump(mode="json"),
                    **result.to_dict(),
                },
            )
    return result
