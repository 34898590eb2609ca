"""``rscrisis predict`` on a tile set: probabilities, predicted IoU and uncertainty per tile.

A prediction set (docs/design.md) is a folder::

    pred/
      probs/<tile_id>.tif   uint8 probability, value / 254 (255 = nodata), georeferenced like
                            the input tile; the GeoTIFF carries scale 1/254 so GDAL/QGIS show p
      scores.gpkg           layer "scores": one row per tile (statistics below + footprint)
      embeddings.npy        float32 (tiles x D) pooled bottleneck features, row i = scores row i
      predict.json          resolved config, model summary, rscrisis version

Per-tile statistics (valid pixels only): ``pred_iou`` (the IoU head), ``mean_entropy`` (binary
entropy in bits), ``mean_margin`` (mean |2p - 1|), ``soft_iou`` (training-free expected IoU
E[intersection] / E[union] of the thresholded mask under the model's own probabilities),
``building_fraction`` (predicted), ``valid_fraction``, ``mean_prob`` and ``max_prob`` (the
highest probability on the tile), ``p_buildings`` (the tile holds a building) and
``calibrated_iou`` (the expected IoU, blank predictions handled: the IoU calibrator that
``finetune`` refits on corrected tiles, the head itself without one; rscrisis.ml.calibration);
with ``mc_samples`` > 0 also ``bald`` (mutual information between prediction and weights, by MC
dropout) and ``mc_agreement`` (mean pairwise IoU between the thresholded samples); with
``tta`` the probabilities average the 8 flips/rotations and ``tta_agreement`` /
``tta_spread`` measure how much those views disagree.

Memory is constant in the number of tiles: tiles stream through in batches, probabilities are
written as they come, embeddings go to a memory-mapped ``.npy``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch

from rscrisis import __version__
from rscrisis.config import PredictConfig
from rscrisis.io.names import child
from rscrisis.io.outputs import atomic_path, claim_output_dir, write_json_atomic
from rscrisis.io.raster import PROB_NODATA, PROB_SCALE, one_band_profile, read_raster
from rscrisis.io.styles import (
    PRIORITY_CLASSES,
    PRIORITY_EXPRESSION,
    YELLOW_TO_RED,
    add_style,
    graduated,
)
from rscrisis.ml.calibration import AGREEMENT, FEATURES, IoUCalibrator
from rscrisis.ml.data import TileDataset, load_tiles
from rscrisis.ml.device import autocast_dtype, resolve_device
from rscrisis.ml.model import (
    BuildingSegmenter,
    ModelMeta,
    binary_entropy,
    check_tiles,
    iou_or_empty,
    load_model,
    prob_stats,
)
from rscrisis.ml.tta import D4, IDENTITY, forward_views
from rscrisis.progress import Progress, no_progress

log = logging.getLogger(__name__)

PROBS = "probs"
SCORES = "scores.gpkg"
SCORES_LAYER = "scores"
EMBEDDINGS = "embeddings.npy"
MANIFEST = "predict.json"
PRODUCTS = (PROBS, SCORES, EMBEDDINGS, MANIFEST)


@dataclass
class BatchOutput:
    prob: np.ndarray  # (B, H, W) float32
    valid: np.ndarray  # (B, H, W) bool
    mask: np.ndarray  # (B, H, W) uint8 labels as loaded (1/0/255; all 0/255 without labels)
    pred_iou: np.ndarray  # (B,)
    embedding: np.ndarray  # (B, D)
    stats: dict[str, np.ndarray]  # per-tile statistics, each (B,)


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    w = valid.flatten(1).float()
    return (values.flatten(1) * w).sum(1) / w.sum(1).clamp_min(1.0)


@torch.no_grad()
def run_model(
    model: BuildingSegmenter,
    loader,
    device: torch.device,
    amp: torch.dtype | None,
    mc_samples: int = 0,
    tta: bool = False,
) -> Iterator[BatchOutput]:
    """Batched inference yielding probabilities and per-tile statistics.

    With ``tta`` the probabilities are the mean of the 8 flips/rotations (rscrisis.ml.tta) and two
    statistics are added: ``tta_agreement`` (mean IoU of each view's mask with the merged mask)
    and ``tta_spread`` (mean per-pixel standard deviation of the views' probabilities).
    """
    threshold = model.threshold
    views = D4 if tta else IDENTITY
    for x, mask, valid in loader:
        x, valid = x.to(device), valid.to(device)
        model.eval()
        out = forward_views(model, x, valid, amp, views)
        prob, iou, emb = out.prob, out.iou, out.embedding
        stats4 = out.stats
        if stats4 is None:  # several views: the statistics of their mean
            stats4 = prob_stats(prob.unsqueeze(1), valid.unsqueeze(1), threshold)
        stats = {
            "mean_entropy": stats4[:, 1],
            "mean_margin": _masked_mean((2 * prob - 1).abs(), valid),
            "soft_iou": stats4[:, 2],
            "building_fraction": stats4[:, 3],
            "valid_fraction": valid.flatten(1).float().mean(1),
            "mean_prob": stats4[:, 0],
            "max_prob": (prob * valid).flatten(1).amax(1),
        }
        if out.agreement is not None and out.spread is not None:
            stats["tta_agreement"] = out.agreement
            stats["tta_spread"] = _masked_mean(out.spread, valid)
        if mc_samples:
            model.enable_mc_dropout()
            samples = []
            for _ in range(mc_samples):
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    s_logits, _, _ = model(x, valid.unsqueeze(1))
                samples.append(torch.sigmoid(s_logits.float()).squeeze(1))
            model.eval()
            stack = torch.stack(samples)  # (S, B, H, W)
            mean_p = stack.mean(0)
            bald = binary_entropy(mean_p) - binary_entropy(stack).mean(0)
            stats["bald"] = _masked_mean(bald, valid)
            binary = (stack > threshold) & valid
            pair_iou = []
            for i in range(mc_samples):
                for j in range(i + 1, mc_samples):
                    inter = (binary[i] & binary[j]).flatten(1).sum(1).float()
                    union = (binary[i] | binary[j]).flatten(1).sum(1).float()
                    pair_iou.append(iou_or_empty(inter, union))
            stats["mc_agreement"] = (
                torch.stack(pair_iou).mean(0) if pair_iou else torch.ones(len(x), device=device)
            )
        yield BatchOutput(
            prob=prob.cpu().numpy(),
            valid=valid.cpu().numpy(),
            mask=mask.numpy(),
            pred_iou=iou.float().cpu().numpy(),
            embedding=emb.float().cpu().numpy(),
            stats={k: v.float().cpu().numpy() for k, v in stats.items()},
        )


def prepare(
    model_path: str | Path,
    tilesets: Sequence[str | Path],
    batch_size: int,
    device_name: str,
    need_masks: bool,
    part: slice | None = None,
    cached: bool = False,
):
    """Load model and tiles, check they fit together, and build a streaming loader (over the
    ``part`` of the tiles when given; ``cached``: the model loaded once per process)."""
    from rscrisis.ml.model import load_model_cached

    device = resolve_device(device_name)
    if cached:
        model, meta = load_model_cached(model_path, device_name)
    else:
        model, meta = load_model(model_path, device)
    table = load_tiles(tilesets, need_masks=need_masks)
    check_tiles(meta, table, tilesets[0])
    frame = table.frame if part is None else table.frame.iloc[part]
    dataset = TileDataset(
        frame.image_path,
        frame.mask_path if need_masks else [None] * len(frame),
        meta.mean,
        meta.std,
        table.dtype,
        cache=False,
    )
    loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False
    )
    return model, meta, table, loader, device


def _write_prob(path: Path, prob: np.ndarray, valid: np.ndarray, like: str) -> None:
    with read_raster(like) as ds:
        profile = one_band_profile(ds, PROB_NODATA)
    data = np.where(valid, np.round(prob * PROB_SCALE), PROB_NODATA).astype(np.uint8)
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data, 1)
        dst.scales = (1 / PROB_SCALE,)
        dst.offsets = (0.0,)
        dst.update_tags(1, meaning="building probability = value / 254; 255 = nodata")
        dst.set_band_description(1, "building probability")


def read_prob(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(probability float32, valid bool) of a probability raster written by predict."""
    with read_raster(path) as ds:
        raw = ds.read(1)
    return raw.astype(np.float32) / PROB_SCALE, raw != PROB_NODATA


@dataclass
class PredictResult:
    out: str
    tiles: int
    seconds: float
    tiles_per_s: float
    mc_samples: int
    mean_pred_iou: float
    mean_entropy: float

    def to_dict(self) -> dict:
        return asdict(self)


def predict_tiles(
    model_path: str | Path,
    tilesets: Sequence[str | Path],
    out: str | Path,
    *,
    config: PredictConfig | None = None,
    overwrite: bool = False,
    progress: Progress = no_progress,
    scheduler: str | None = None,
) -> PredictResult:
    """Write a prediction set for every tile of ``tilesets``.

    ``scheduler`` (rscrisis.cluster): parts of :data:`PART_BATCHES` batches are tasks on a Dask
    cluster, gathered in tile order; the prediction set is the same as here (parts start on
    batch boundaries, so every batch is too), except that with ``--mc-samples`` each part
    draws its own seeded dropout masks."""
    import geopandas as gpd

    config = config or PredictConfig()
    out = Path(out)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model, meta, table, loader, device = prepare(
        model_path, tilesets, config.batch_size, config.device, need_masks=False
    )
    with claim_output_dir(out, PRODUCTS, overwrite=overwrite):
        (out / PROBS).mkdir(parents=True, exist_ok=True)
        frame = table.frame
        n = len(frame)
        emb_tmp = out / f".{EMBEDDINGS}.partial.npy"
        embeddings = np.lib.format.open_memmap(
            emb_tmp, mode="w+", dtype=np.float32, shape=(n, model.embedding_dim)
        )
        t0 = time.perf_counter()
        try:
            used_engine = "per worker"
            if scheduler:
                stats = _predict_on_cluster(
                    model_path, tilesets, out, config, n, embeddings, scheduler, progress
                )
            else:
                engine = _engine(model, device, config, n)
                used_engine = engine.name
                stats = predict_part(engine.model, loader, frame, out, device, engine.amp,
                                     config, embeddings, progress, n)  # fmt: skip
            embeddings.flush()
            del embeddings
            emb_tmp.replace(out / EMBEDDINGS)
        except BaseException:
            emb_tmp.unlink(missing_ok=True)
            raise
        rows = [{**row, "geometry": geom} for row, geom in zip(stats, frame.geometry, strict=True)]
        seconds = time.perf_counter() - t0
        calibrator = model_calibrator(meta)
        if rows:
            known = [k for k in (*FEATURES, AGREEMENT) if k in rows[0]]
            stats = {k: np.array([r[k] for r in rows]) for k in known}
            for k, v in calibrator.apply(stats).items():
                for r, value in zip(rows, v.tolist(), strict=True):
                    r[k] = value
        scores = gpd.GeoDataFrame(rows, geometry="geometry", crs=frame.crs)
        with atomic_path(out / SCORES) as tmp:
            scores.to_file(tmp, layer=SCORES_LAYER, driver="GPKG", engine="pyogrio")
            add_style(tmp, SCORES_LAYER, graduated(PRIORITY_EXPRESSION, PRIORITY_CLASSES,
                      YELLOW_TO_RED), "priority", "tiles coloured by the default annotation "
                      "priority, entropy-iou (red: annotate first)")  # fmt: skip
        result = PredictResult(
            out=str(out),
            tiles=n,
            seconds=round(seconds, 2),
            tiles_per_s=round(n / seconds, 2) if seconds else 0.0,
            mc_samples=config.mc_samples,
            mean_pred_iou=round(float(scores.pred_iou.mean()), 4),
            mean_entropy=round(float(scores.mean_entropy.mean()), 4),
        )
        write_json_atomic(
            out / MANIFEST,
            {
                "kind": "rscrisis.prediction_set",
                "rscrisis_version": __version__,
                "model": str(model_path),
                "model_encoder": meta.encoder,
                "model_training": meta.training.get("tilesets"),
                "tilesets": [str(t) for t in tilesets],
                "config": config.model_dump(mode="json"),
                "embedding_dim": model.embedding_dim,
                "engine": used_engine,
                "threshold": meta.threshold,
                "result": result.to_dict(),
            },
        )
        return result


#: batches per task of a prediction on a cluster
PART_BATCHES = 32


def predict_part(
    model, loader, frame, out: Path, device, amp, config: PredictConfig, embeddings,
    progress: Progress = no_progress, total: int = 0, offset: int = 0,
) -> list[dict]:  # fmt: skip
    """Predict the tiles of ``frame`` (the loader's, in order): probability rasters into
    ``out``, embeddings into ``embeddings`` (one row per tile), and one statistics row each."""
    rows: list[dict] = []
    i = 0
    for batch in run_model(model, loader, device, amp, config.mc_samples, config.tta):
        for b in range(len(batch.pred_iou)):
            rec = frame.iloc[i]
            _write_prob(
                child(out / PROBS, rec.tile_id, ".tif"), batch.prob[b], batch.valid[b],
                rec.image_path,
            )  # fmt: skip
            embeddings[i] = batch.embedding[b]
            row = {
                "tile_id": rec.tile_id,
                "scene": rec.scene,
                "tileset": str(Path(rec.root).resolve()),
                "prob": f"{PROBS}/{rec.tile_id}.tif",
                "pred_iou": float(batch.pred_iou[b]),
            }
            row.update({k: float(v[b]) for k, v in batch.stats.items()})
            rows.append(row)
            i += 1
        progress(offset + i, total or len(frame))
    return rows


def predict_tiles_part(
    model_path: str, tilesets: list[str], start: int, stop: int, out: str, config: dict
) -> dict:
    """A task: the tiles ``start:stop`` of ``tilesets`` (statistics rows and embeddings back
    to the caller, probability rasters into ``out``), on a Dask worker."""
    settings = PredictConfig(**config)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed * 1_000_003 + start)
    model, _, table, loader, device = prepare(
        model_path, tilesets, settings.batch_size, settings.device, need_masks=False,
        part=slice(start, stop), cached=True,
    )  # fmt: skip
    frame = table.frame.iloc[start:stop]
    embeddings = np.zeros((len(frame), model.embedding_dim), np.float32)
    engine = _engine(model, device, settings, len(frame))
    rows = predict_part(engine.model, loader, frame, Path(out), device, engine.amp, settings,
                        embeddings)  # fmt: skip
    return {"start": start, "rows": rows, "embeddings": embeddings}


def _engine(model, device, config: PredictConfig, tiles: int):
    """What runs ``model`` over ``tiles`` tiles for ``config`` (rscrisis.ml.engine): fp32
    PyTorch or ONNX Runtime."""
    from rscrisis.ml.engine import select_engine

    amp = autocast_dtype(device, "auto")
    views = 8 if config.tta else 1
    return select_engine(model, device, amp, config.engine, mc_dropout=config.mc_samples > 0,
                         windows=tiles * views)  # fmt: skip


def _predict_on_cluster(model_path, tilesets, out, config, n, embeddings, scheduler, progress):
    """Parts of the tile list as Dask tasks; rows and embeddings gathered in tile order."""
    from rscrisis import cluster

    place = cluster.executor(scheduler)
    try:
        settings = config.model_copy(update={"threads": place.torch_threads(config.threads)})
        # parts of whole batches: at most PART_BATCHES, and enough parts for every worker
        batch, workers = config.batch_size, place.workers()
        size = batch * min(PART_BATCHES, max(1, math.ceil(math.ceil(n / workers) / batch)))
        jobs = [
            (start, (str(model_path), [str(t) for t in tilesets], start, min(start + size, n),
                     str(out), settings.model_dump()))
            for start in range(0, n, size)
        ]  # fmt: skip
        parts: dict[int, list[dict]] = {}
        done = 0
        for start, part in place.run(predict_tiles_part, jobs):
            embeddings[start : start + len(part["rows"])] = part["embeddings"]
            parts[start] = part["rows"]
            done += len(part["rows"])
            progress(done, n)
        return [row for start in sorted(parts) for row in parts[start]]
    finally:
        place.close()


def model_calibrator(meta: ModelMeta) -> IoUCalibrator:
    """The IoU calibrator a model carries (fitted by finetune), or the prior without one."""
    return IoUCalibrator.from_dict(meta.training.get("iou_calibrator"), meta.threshold)
