"""``rscrisis train``: supervised training of the U-Net + IoU head on tile sets.

The loop is shared by ``pretrain`` and ``finetune`` (later stages): masked BCE + Dice for the
segmentation (255 = ignore), a regression of the IoU head onto the actual per-tile IoU of the
detached thresholded prediction, AdamW with warm-up and cosine decay, a spatially blocked
validation split, early stopping, the best model kept as ``.safetensors``, a resumable state
file, and the history written beside the model.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rscrisis import __version__
from rscrisis.config import TrainConfig
from rscrisis.errors import InputError, OutputExistsError, TrainingDivergedError
from rscrisis.io.outputs import atomic_path, write_csv_atomic, write_json_atomic
from rscrisis.ml.data import TileDataset, augmentation, band_statistics, load_tiles, spatial_split
from rscrisis.ml.device import autocast_dtype, fast_dtype, resolve_device, seed_everything
from rscrisis.ml.losses import LossOptions, segmentation_loss
from rscrisis.ml.metrics import Confusion, calibration
from rscrisis.ml.model import (
    BuildingSegmenter,
    ModelMeta,
    build_model,
    check_bands,
    iou_or_empty,
    load_model,
    save_model,
)
from rscrisis.progress import Progress, no_progress

log = logging.getLogger(__name__)


def batch_tile_iou(pred: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-tile IoU (B,) with the conventions of rscrisis.ml.metrics: 1 if both empty, NaN if
    the tile has no valid pixel."""
    p = (pred & valid).flatten(1)
    t = ((mask == 1) & valid).flatten(1)
    inter = (p & t).sum(1).float()
    union = (p | t).sum(1).float()
    iou = iou_or_empty(inter, union)
    return torch.where(valid.flatten(1).any(1), iou, torch.full_like(iou, float("nan")))


class WarmupCosine:
    """Learning-rate factor: linear warm-up over 10 % of the plan, then cosine decay to 1 %.

    The plan (total steps) can shrink once, when a wall-clock budget shows fewer epochs fit
    than asked; as a callable object its state is saved with the scheduler for ``--resume``.
    """

    def __init__(self, total_steps: int, warmup_fraction: float = 0.1):
        self.total = max(1, total_steps)
        self.warmup = max(1, int(warmup_fraction * self.total))
        self.warmup_fraction = warmup_fraction

    def replan(self, total_steps: int) -> None:
        self.total = max(1, total_steps)
        self.warmup = min(self.warmup, max(1, int(self.warmup_fraction * self.total)))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    model: str
    epochs_run: int = 0
    planned_epochs: int = 0
    best_epoch: int = 0
    best: dict = field(default_factory=dict)
    train_tiles: int = 0
    val_tiles: int = 0
    buffer_dropped_tiles: int = 0
    images_per_s: float = 0.0
    seconds: float = 0.0
    device: str = "cpu"
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def sidecar(model_path: Path, suffix: str) -> Path:
    """Files that live beside a model: ``pre.safetensors`` -> ``pre.history.csv`` etc."""
    return model_path.with_name(model_path.name.removesuffix(".safetensors") + suffix)


TRANSFERRED_DECODER_BLOCKS = 2


def transferred_parts(model: BuildingSegmenter, transfer: str) -> list[torch.nn.Module]:
    """The modules an ``--init`` model passes on under ``transfer`` (see TrainConfig)."""
    if transfer == "all":
        return [model]
    parts: list[torch.nn.Module] = [model.unet.encoder]
    if transfer == "encoder+decoder":
        decoder = model.unet.decoder
        parts += [decoder.center, *decoder.blocks[:TRANSFERRED_DECODER_BLOCKS]]
    return parts


def _transfer(source: BuildingSegmenter, meta: ModelMeta, transfer: str) -> BuildingSegmenter:
    """A freshly initialised model (seeded) that takes only the transferred parts of ``source``."""
    fresh = build_model(meta)
    for src, dst in zip(
        transferred_parts(source, transfer), transferred_parts(fresh, transfer), strict=True
    ):
        dst.load_state_dict(src.state_dict())
    return fresh


def _freeze(model: BuildingSegmenter, config: TrainConfig) -> list[torch.nn.Module]:
    frozen: list[torch.nn.Module] = []
    if config.freeze_transferred:
        frozen = transferred_parts(model, config.transfer)
        if config.transfer == "all":  # everything but the heads
            frozen = [model.unet.encoder, model.unet.decoder]
    elif config.freeze_encoder:
        frozen = [model.unet.encoder]
    elif config.freeze_stages:
        stages = model.encoder_stages()
        if config.freeze_stages > len(stages):
            raise InputError(
                f"--freeze-stages {config.freeze_stages}: the encoder has only {len(stages)} stages"
            )
        frozen = stages[: config.freeze_stages]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    return frozen


def batch_losses(
    model: BuildingSegmenter,
    x: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor,
    amp: torch.dtype | None,
    options: LossOptions,
    progress: float,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(segmentation loss, IoU-head loss) of one batch: the head regresses the per-tile IoU
    of the detached thresholded prediction (NaN tiles, without valid pixels, left out)."""
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        logits, iou_pred, _ = model(x, valid.unsqueeze(1))
    seg_loss = segmentation_loss(logits, mask, valid, options, progress)
    with torch.no_grad():
        pred = torch.sigmoid(logits.detach().float()).squeeze(1) > threshold
        iou_true = batch_tile_iou(pred, mask, valid)
    ok = torch.isfinite(iou_true)
    iou_loss = F.mse_loss(iou_pred.float()[ok], iou_true[ok]) if ok.any() else iou_pred.sum() * 0
    return seg_loss, iou_loss


@torch.no_grad()
def validate(
    model: BuildingSegmenter,
    loader,
    device: torch.device,
    threshold: float,
    amp: torch.dtype | None,
) -> dict:
    model.eval()
    conf = Confusion()
    pred_iou, true_iou = [], []
    for x, m, v in loader:
        x, m, v = x.to(device), m.to(device), v.to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits, iou, _ = model(x, v.unsqueeze(1))
        pred = torch.sigmoid(logits.float()).squeeze(1) > threshold
        t = (m == 1) & v
        p = pred & v
        tp = int((p & t).sum())
        conf += Confusion(tp, int(p.sum()) - tp, int(t.sum()) - tp, 0)
        pred_iou.extend(iou.float().cpu().tolist())
        true_iou.extend(batch_tile_iou(pred, m, v).cpu().tolist())
    scores = conf.scores()
    cal = calibration(np.array(pred_iou), np.array(true_iou))
    return {
        "val_iou": scores["iou"],
        "val_f1": scores["f1"],
        "val_iou_spearman": cal["spearman"],
        "val_iou_mae": cal["mae"],
    }


def train(
    tilesets: Sequence[str | Path],
    out: str | Path,
    *,
    config: TrainConfig | None = None,
    init: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: Progress = no_progress,
    extra_training_meta: dict | None = None,
) -> TrainResult:
    """Train on labelled tile sets and write the best model to ``out`` (.safetensors)."""
    config = config or TrainConfig()
    out = Path(out)
    if out.suffix != ".safetensors":
        raise InputError("the model file name must end in .safetensors", path=out)
    state_path = sidecar(out, ".state.pt")
    # the best epoch so far lives under a hidden name until the run ends: a final-named model
    # file is always a finished run's (an interrupted run keeps it here, for --resume)
    best_path = out.with_name(f".{out.name.removesuffix('.safetensors')}.best.safetensors")
    if overwrite and resume:
        raise InputError("--overwrite and --resume exclude each other", hint="choose one")
    if resume and not state_path.exists():
        raise InputError(
            "nothing to resume: no training state beside the model",
            path=out,
            hint="start a new run (without --resume)",
        )
    if state_path.exists() and not (overwrite or resume):
        raise OutputExistsError(
            "an interrupted training run left its state here",
            path=out,
            hint="pass --resume to continue it or --overwrite to restart",
        )
    if out.exists() and not (overwrite or resume):
        raise OutputExistsError(
            "exists", path=out, hint="pass --overwrite to replace it or choose another --out"
        )

    t_start = time.perf_counter()
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    amp = autocast_dtype(device, config.precision)

    table = load_tiles(tilesets, need_masks=True)
    frame = table.frame
    train_idx, val_idx, dropped = spatial_split(
        frame, config.val_fraction, config.block_tiles, config.seed
    )
    if config.max_tiles and len(train_idx) > config.max_tiles:
        rng = np.random.default_rng(config.seed)
        train_idx = np.sort(rng.choice(train_idx, config.max_tiles, replace=False))

    if init is not None:
        model, init_meta = load_model(init)
        check_bands(init_meta, table.band_count, tilesets[0])
        if config.encoder != init_meta.encoder:
            log.info("--init model uses encoder %s; --encoder is ignored", init_meta.encoder)
        mean, std = init_meta.mean, init_meta.std
        encoder = init_meta.encoder
        history_before = list(init_meta.history)
        training_before = dict(init_meta.training)
    else:
        mean, std = band_statistics(list(frame.image_path.iloc[train_idx]), seed=config.seed)
        encoder = config.encoder
        history_before, training_before = [], {}
    meta = ModelMeta(
        encoder=encoder,
        in_channels=table.band_count,
        mean=mean,
        std=std,
        tile_size=table.tile_size,
        threshold=config.threshold,
        bands=table.bands,
        colorinterp=table.colorinterp,
        dtype=table.dtype,
        gsd_m=table.gsd_m,
    )
    if init is None:
        model = build_model(meta)
    elif config.transfer != "all":
        model = _transfer(model, meta, config.transfer)
    model.threshold = config.threshold
    model.to(device)
    frozen = _freeze(model, config)

    def dataset(idx, aug):
        rows = frame.iloc[idx]
        return TileDataset(
            rows.image_path,
            rows.mask_path,
            mean,
            std,
            table.dtype,
            augment=augmentation(config.seed) if aug else None,
        )

    gen = torch.Generator().manual_seed(config.seed)
    train_loader = torch.utils.data.DataLoader(
        dataset(train_idx, config.augment),
        batch_size=config.batch_size,
        shuffle=True,
        generator=gen,
        drop_last=len(train_idx) > config.batch_size,
    )
    val_loader = (
        torch.utils.data.DataLoader(dataset(val_idx, False), batch_size=config.batch_size)
        if len(val_idx)
        else None
    )
    loss_options = LossOptions(
        config.loss, config.label_smoothing, config.confidence_weighting, config.edge_ignore
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(train_loader))
    total_steps = config.epochs * steps_per_epoch
    plan = WarmupCosine(total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, plan)

    history: list[dict] = []
    best_score, best_epoch, start_epoch = -math.inf, 0, 0
    epochs_without_gain = 0
    if resume:
        state = _load_state(state_path, device)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history = json.loads(state["history"])
            best_score, best_epoch = float(state["best_score"]), int(state["best_epoch"])
            start_epoch = int(state["epoch"])
            epochs_without_gain = int(state.get("epochs_without_gain", 0))
            _restore_rng(json.loads(state["rng"]), gen, state, train_loader.dataset.augment)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise _state_error(state_path, f"it does not match this run ({exc})") from exc
        if best_epoch and not best_path.exists():
            raise _state_error(state_path, f"the best model so far ({best_path.name}) is gone")
        log.info("resuming at epoch %d", start_epoch + 1)

    result = TrainResult(
        model=str(out),
        train_tiles=len(train_idx),
        val_tiles=len(val_idx),
        buffer_dropped_tiles=len(dropped),
        device=str(device),
        planned_epochs=config.epochs,
    )
    resolved = [str(Path(t).resolve()) for t in tilesets]
    train_meta = {
        "tilesets": [str(t) for t in tilesets],
        # what finetune replays so a few new tiles do not wipe out what was learnt here
        "pretraining_tilesets": (
            resolved
            if init is None
            else list(dict.fromkeys(training_before.get("pretraining_tilesets", []) + resolved))
        ),
        "config": config.model_dump(mode="json"),
        "init": None if init is None else str(init),
        "train_tiles": len(train_idx),
        "val_tiles": len(val_idx),
        **(extra_training_meta or {}),
    }
    seen = 0
    t_train = 0.0
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, config.epochs):
        model.train()
        for m in frozen:
            m.eval()
        if config.freeze_norm:  # keep the starting model's normalisation statistics
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        t0 = time.perf_counter()
        losses = []
        for x, mask, valid in train_loader:
            x, mask, valid = x.to(device), mask.to(device), valid.to(device)
            seg_loss, iou_loss = batch_losses(
                model, x, mask, valid, amp, loss_options, step / total_steps, config.threshold
            )
            loss = seg_loss + config.iou_loss_weight * iou_loss
            check_finite(loss, f"epoch {epoch + 1}, step {step + 1}", config.lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append((seg_loss.item(), iou_loss.item()))
            seen += len(x)
            step += 1
            progress(
                step,
                total_steps,
                f"epoch {epoch + 1}/{config.epochs} loss {np.mean([a for a, _ in losses]):.3f}",
            )
        t_train += time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "seg_loss": round(float(np.mean([a for a, _ in losses])), 5),
            "iou_loss": round(float(np.mean([b for _, b in losses])), 5),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if val_loader is not None:
            row.update(
                {
                    k: round(v, 5) if isinstance(v, float) and math.isfinite(v) else v
                    for k, v in validate(model, val_loader, device, config.threshold, amp).items()
                }
            )
            score = row["val_iou"]
        else:
            score = -row["seg_loss"]
        history.append(row)
        if "val_iou" in row:
            progress(
                step,
                total_steps,
                f"epoch {epoch + 1}/{config.epochs} "
                f"loss {row['seg_loss']:.3f} val IoU {row['val_iou']:.3f}",
            )
        log.info("epoch %s", json.dumps(row))
        improved = score > best_score
        if improved:
            best_score, best_epoch = score, epoch + 1
            epochs_without_gain = 0
            meta.history = history_before + history
            meta.training = {
                **training_before,
                **train_meta,
                "best_epoch": best_epoch,
                "rscrisis_version": __version__,
            }
            if training_before:
                meta.training["previous"] = training_before
            save_model(model, meta, best_path)
        else:
            epochs_without_gain += 1
        with atomic_path(state_path) as tmp:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": json.dumps(history),
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "epoch": epoch + 1,
                    "epochs_without_gain": epochs_without_gain,
                    "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "rng": json.dumps(_rng_state(train_loader.dataset.augment)),
                },
                tmp,
            )
        write_csv_atomic(sidecar(out, ".history.csv"), history)
        if epochs_without_gain >= config.patience:
            log.info("early stopping: no improvement for %d epochs", config.patience)
            break
        elapsed = time.perf_counter() - t_start
        if config.max_minutes and epoch == start_epoch and not resume:
            # Now that one epoch has been timed, fit the schedule to the budget so the
            # learning rate anneals before time runs out (not reproducible across machines).
            fit = int((60 * config.max_minutes - elapsed) // max(row["seconds"], 1e-3)) + 1
            planned = max(epoch + 1, min(config.epochs, fit))
            plan.replan(planned * steps_per_epoch)
            result.planned_epochs = planned
            total_steps = planned * steps_per_epoch
            log.info("budget of %.1f min: planning %d epochs", config.max_minutes, planned)
        if step >= plan.total:
            break
        if config.max_minutes and elapsed > 60 * config.max_minutes:
            log.info("stopping: the %.1f min budget is spent", config.max_minutes)
            break

    # the best model's metadata gets the full history, including epochs after the best; only
    # now does the model appear under its final name
    best_model, best_meta = load_model(best_path)
    best_meta.history = history_before + history
    save_model(best_model, best_meta, out)
    best_path.unlink(missing_ok=True)
    state_path.unlink(missing_ok=True)
    result.history = history
    result.epochs_run = len(history)
    result.best_epoch = best_epoch
    result.best = next((r for r in history if r["epoch"] == best_epoch), {})
    result.images_per_s = round(seen / t_train, 2) if t_train else 0.0
    result.seconds = round(time.perf_counter() - t_start, 2)
    write_json_atomic(
        sidecar(out, ".train.json"),
        {
            "kind": "rscrisis.train",
            "rscrisis_version": __version__,
            "config": config.model_dump(mode="json"),
            "tilesets": [str(t) for t in tilesets],
            "init": None if init is None else str(init),
            "result": result.to_dict(),
        },
    )
    return result


# --------------------------------------------------------------------------------------------
# Fine-tuning on few tiles: a budget of optimisation steps, not epochs
# --------------------------------------------------------------------------------------------


@dataclass
class StepPlan:
    """How :func:`fit_steps` spends its budget (resolved from FinetuneConfig by finetune)."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    replay_ratio: float = 1.0
    max_empty_share: float = 0.5
    ema: float = 0.0
    eval_every: int = 25
    iou_loss_weight: float = 0.5
    seed: int = 0
    precision: str = "auto"


@dataclass
class StepFit:
    """What :func:`fit_steps` did: before/after on its check tiles, the history, the choice."""

    history: list[dict]
    before: dict
    after: dict
    chosen: str  # "final" (fixed budget), "step N" (best on the slice) or "start"
    new_draws: int
    replay_draws: int
    images_per_s: float


def _fit_to(item, size: int, rng: np.random.Generator):
    """Crop (random) or pad (with ignore) a dataset item (x, mask, valid) to size x size, so
    replayed tiles of another tile size batch with the new ones."""
    x, mask, valid = item
    h, w = mask.shape
    if h > size or w > size:
        r0 = int(rng.integers(0, max(1, h - size + 1)))
        c0 = int(rng.integers(0, max(1, w - size + 1)))
        x, mask, valid = (
            x[:, r0 : r0 + size, c0 : c0 + size],
            mask[r0 : r0 + size, c0 : c0 + size],
            valid[r0 : r0 + size, c0 : c0 + size],
        )
        h, w = mask.shape
    if h < size or w < size:
        pad = (0, size - w, 0, size - h)
        x = F.pad(x, pad)
        mask = F.pad(mask, pad, value=255)
        valid = F.pad(valid, pad, value=False)
    return x, mask, valid


def training_lr(meta: ModelMeta) -> float:
    """The learning rate a model was trained with (fine-tuning and adaptation scale it)."""
    return meta.training.get("config", {}).get("lr", 1e-3)


def stack_items(items, device: torch.device | None = None):
    """Dataset items [(x, mask, valid), ...] -> batched (x, mask, valid) on ``device``."""
    x, mask, valid = (torch.stack([item[k] for item in items]) for k in range(3))
    return (x, mask, valid) if device is None else (x.to(device), mask.to(device), valid.to(device))


def draw_weights(has_buildings: np.ndarray, max_empty_share: float) -> np.ndarray:
    """Sampling probabilities of the new tiles: tiles without any building get at most
    ``max_empty_share`` of the draws when tiles with buildings exist (class balance: a batch
    of fields and water must not teach the model that nothing is a building)."""
    has = np.asarray(has_buildings, bool)
    n = len(has)
    if n == 0:
        return np.zeros(0)
    if has.all() or not has.any():
        return np.full(n, 1.0 / n)
    empty_share = min(1.0 - has.mean(), max_empty_share)
    return np.where(has, (1 - empty_share) / has.sum(), empty_share / (~has).sum())


class _Ema:
    """Exponential moving average of a model's parameters and buffers, with the usual warm-up
    (decay min(d, (1 + t) / (10 + t))), so early steps are not frozen in."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.t = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.t += 1
        d = min(self.decay, (1 + self.t) / (10 + self.t))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.state[k].copy_(v)


def _rng_state(augment) -> dict:
    """Every random stream of a training run besides torch's (saved as tensors): Python's,
    NumPy's global one and the augmentation pipeline's, so ``--resume`` continues exactly."""
    import random

    from rscrisis.ml.data import random_state

    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1])],
        "numpy": [np_state[0], np_state[1].tolist(), *map(float, np_state[2:])],
        "augment": random_state(augment),
    }


def _restore_rng(saved: dict, gen: torch.Generator, state: dict, augment) -> None:
    import random

    from rscrisis.ml.data import restore_random_state

    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate((saved["python"][0], tuple(saved["python"][1]), None))
    name, keys, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((name, np.array(keys, np.uint32), int(pos), int(has_gauss), cached))
    restore_random_state(augment, saved["augment"])


def _state_error(path: Path, problem: str) -> InputError:
    return InputError(
        f"is not a training state this rscrisis can resume: {problem}",
        path=path,
        hint="it is damaged or was not written by rscrisis train; delete it and rerun with "
        "--overwrite to start again",
    )


def _load_state(path: Path, device) -> dict:
    """Read a ``.state.pt`` with ``weights_only`` (nothing executable is unpickled) and turn
    torch's failures, whose advice to pass ``weights_only=False`` would be unsafe here, into
    one line that says what the file is."""
    import pickle
    import zipfile

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        # torch's own message is not relayed: it suggests weights_only=False, which would run
        # whatever code a tampered file holds
        raise _state_error(path, f"it cannot be read safely ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise _state_error(path, "it holds no state dictionary")
    return state


def check_finite(loss: torch.Tensor, where: str, lr: float) -> None:
    """Stop at once when the loss is NaN or infinite: every later step would only spread the
    NaN into the weights, and a model of NaNs must never be saved."""
    if not torch.isfinite(loss.detach()).all():
        raise TrainingDivergedError(
            f"training diverged: the loss became {float(loss.detach().float()):.4g} at {where} "
            f"(learning rate {lr:g}); nothing was saved",
            hint="lower the learning rate (--lr or --lr-scale); if it persists, look for NaN or "
            "extreme values in the tiles (gdalinfo -stats)",
        )


def fit_steps(
    model: BuildingSegmenter,
    meta: ModelMeta,
    new: TileDataset,
    new_has_buildings: np.ndarray,
    plan: StepPlan,
    *,
    frozen: Sequence[torch.nn.Module] = (),
    freeze_norm: bool = True,
    replay: TileDataset | None = None,
    check: TileDataset | None = None,
    select_on_check: bool = False,
    device: torch.device | None = None,
    tile_size: int | None = None,
    progress: Progress = no_progress,
) -> StepFit:
    """Fine-tune ``model`` in place for ``plan.steps`` optimisation steps.

    Each batch draws ``batch_size`` tiles *with replacement*: ``replay_ratio`` replayed tiles
    per new tile (when ``replay`` is given), the new tiles class-balanced by
    :func:`draw_weights`, each through the augmentation of its dataset. So 5 tiles get as much
    optimisation as 50. AdamW with warm-up and cosine decay over the budget; with ``plan.ema``
    the weights used at the end are an exponential moving average (steadier than the last
    step on a handful of tiles).

    ``check`` tiles are scored *before the first step* and after: with ``select_on_check``
    (a held-out slice large enough to trust) the starting weights stay in the running, and the
    best of start and the evaluations every ``eval_every`` steps is kept; otherwise the budget
    is fixed and ``check`` only reports before -> after.
    """
    device = device or torch.device("cpu")
    amp = fast_dtype(device, plan.precision)
    threshold = meta.threshold
    rng = np.random.default_rng(plan.seed)
    size = tile_size or meta.tile_size
    weights = draw_weights(new_has_buildings, plan.max_empty_share)
    n_replay = 0
    if replay is not None and len(replay) and plan.replay_ratio > 0:
        n_replay = min(
            plan.batch_size - 1,
            round(plan.batch_size * plan.replay_ratio / (1 + plan.replay_ratio)),
        )
    n_new = plan.batch_size - n_replay
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=plan.lr, weight_decay=plan.weight_decay)
    schedule = WarmupCosine(plan.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ema = _Ema(model, plan.ema) if plan.ema > 0 else None

    def score(state: dict | None = None) -> dict:
        if check is None or not len(check):
            return {}
        if state is not None:
            live = {k: v.clone() for k, v in model.state_dict().items()}
            model.load_state_dict(state)
        loader = torch.utils.data.DataLoader(check, batch_size=plan.batch_size)
        out = validate(model, loader, device, threshold, amp)
        if state is not None:
            model.load_state_dict(live)
        return out

    def set_train_mode() -> None:
        model.train()
        for m in frozen:
            m.eval()
        if freeze_norm:
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    before = score()
    best_score = before.get("val_iou", -math.inf) if select_on_check else -math.inf
    best_state = (
        {k: v.detach().clone() for k, v in model.state_dict().items()} if select_on_check else None
    )
    chosen = "start" if select_on_check else "final"
    history: list[dict] = []
    losses: list[tuple[float, float]] = []
    t_train, drawn_new, drawn_replay = 0.0, 0, 0
    for step in range(plan.steps):
        set_train_mode()
        t0 = time.perf_counter()
        picks = [new[int(i)] for i in rng.choice(len(new), size=n_new, p=weights)]
        if n_replay:
            picks += [replay[int(i)] for i in rng.integers(0, len(replay), size=n_replay)]
        drawn_new += n_new
        drawn_replay += n_replay
        x, mask, valid = stack_items([_fit_to(item, size, rng) for item in picks], device)
        seg_loss, iou_loss = batch_losses(
            model, x, mask, valid, amp, LossOptions(), step / plan.steps, threshold
        )
        loss = seg_loss + plan.iou_loss_weight * iou_loss
        check_finite(loss, f"step {step + 1}", plan.lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(model)
        t_train += time.perf_counter() - t0
        losses.append((seg_loss.item(), iou_loss.item()))
        last = step + 1 == plan.steps
        if (step + 1) % plan.eval_every == 0 or last:
            row = {
                "step": step + 1,
                "seg_loss": round(float(np.mean([a for a, _ in losses])), 5),
                "iou_loss": round(float(np.mean([b for _, b in losses])), 5),
                "lr": optimizer.param_groups[0]["lr"],
            }
            losses = []
            if select_on_check or last:
                state = ema.state if ema is not None else None
                row.update({k: _round(v) for k, v in score(state).items()})
                if select_on_check and row.get("val_iou", -math.inf) > best_score:
                    best_score = row["val_iou"]
                    best_state = {
                        k: v.detach().clone() for k, v in (state or model.state_dict()).items()
                    }
                    chosen = f"step {step + 1}"
            history.append(row)
            log.info("fine-tuning %s", json.dumps(row))
        progress(step + 1, plan.steps, f"step {step + 1}/{plan.steps} loss {seg_loss.item():.3f}")
    if select_on_check:
        model.load_state_dict(best_state)
    elif ema is not None:
        model.load_state_dict(ema.state)
    model.eval()
    after = score()
    return StepFit(
        history=history,
        before={k: _round(v) for k, v in before.items()},
        after={k: _round(v) for k, v in after.items()},
        chosen=chosen,
        new_draws=drawn_new,
        replay_draws=drawn_replay,
        images_per_s=round((drawn_new + drawn_replay) / t_train, 2) if t_train else 0.0,
    )


def _round(v):
    return round(v, 5) if isinstance(v, float) and math.isfinite(v) else v
