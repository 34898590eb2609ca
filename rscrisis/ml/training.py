"""Supervised training of the U-Net + IoU head: one :class:`Trainer` for every command.

The optimisation (:class:`Trainer`) is shared by ``train``/``pretrain``, ``finetune``, every
round of ``simulate`` and ``adapt``'s self-training: the segmentation loss (masked BCE + Dice,
or a noise-robust one; 255 = ignore), a regression of the IoU head onto the actual per-tile IoU
of the detached thresholded prediction, AdamW with warm-up and cosine decay, an optional weight
average. Two ways to spend it:

- :func:`train` runs epochs over a tile set (:class:`_EpochRun`): a spatially blocked
  validation split, early stopping, the best model kept as ``.safetensors``, a resumable state
  file, a time budget, and the history written beside the model;
- :func:`fit_steps` runs a budget of steps drawn with replacement, for a few corrected tiles
  (``finetune``, ``simulate``, ``adapt``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from rscrisis import __version__
from rscrisis.config import FittingConfig, TrainConfig
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


def _freeze(model: BuildingSegmenter, config: FittingConfig) -> list[torch.nn.Module]:
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
    replay_from: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(segmentation loss, IoU-head loss) of one batch: the head regresses the per-tile IoU
    of the detached thresholded prediction (NaN tiles, without valid pixels, left out).

    ``replay_from``: the tiles from this index on are replayed pretraining tiles, normalised
    with the model's source batch-norm statistics (:meth:`BuildingSegmenter.source_statistics`;
    batch norm must be in eval mode); the losses are those of the whole batch."""
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        v = valid.unsqueeze(1)
        if replay_from is None or not 0 < replay_from < len(x):
            logits, iou_pred, _ = model(x, v)
        else:
            new = model(x[:replay_from], v[:replay_from])
            with model.source_statistics():
                old = model(x[replay_from:], v[replay_from:])
            logits, iou_pred = (torch.cat([a, b]) for a, b in zip(new[:2], old[:2], strict=True))
    seg_loss = segmentation_loss(logits, mask, valid, options, progress)
    with torch.no_grad():
        pred = torch.sigmoid(logits.detach().float()).squeeze(1) > threshold
        iou_true = batch_tile_iou(pred, mask, valid)
    ok = torch.isfinite(iou_true)
    iou_loss = F.mse_loss(iou_pred.float()[ok], iou_true[ok]) if ok.any() else iou_pred.sum() * 0
    return seg_loss, iou_loss


@torch.no_grad()
def _validation_pass(
    model: BuildingSegmenter,
    loader,
    device: torch.device,
    threshold: float,
    amp: torch.dtype | None,
) -> tuple[Confusion, list[float], list[float]]:
    """Pixel confusion over ``loader`` (true negatives not counted), and per tile the IoU
    head's prediction and the true IoU."""
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
    return conf, pred_iou, true_iou


def validate(
    model: BuildingSegmenter,
    loader,
    device: torch.device,
    threshold: float,
    amp: torch.dtype | None,
) -> dict:
    conf, pred_iou, true_iou = _validation_pass(model, loader, device, threshold, amp)
    scores = conf.scores()
    cal = calibration(np.array(pred_iou), np.array(true_iou))
    return {
        "val_iou": scores["iou"],
        "val_f1": scores["f1"],
        "val_iou_spearman": cal["spearman"],
        "val_iou_mae": cal["mae"],
    }


class Trainer:
    """One optimisation, shared by every training in rscrisis: ``train``/``pretrain`` (epochs,
    :class:`_EpochRun`), ``finetune``, every round of ``simulate`` and ``adapt``'s self-training
    (a budget of steps, :func:`fit_steps`).

    Its steps are named after what they do, the shape of TorchGeo's trainer hooks without
    Lightning: :meth:`train_mode` (frozen parts and, with ``freeze_norm``, batch-norm
    statistics stay fixed), :meth:`step` (forward, segmentation + IoU-head loss, a NaN check,
    AdamW, the warm-up/cosine schedule, the weight average), :meth:`validate` (pixel IoU/F1 and
    the IoU head's calibration on held-out tiles), :meth:`replan` (a shorter schedule when a
    time budget shows fewer steps fit) and :meth:`state_dict`/:meth:`load_state_dict` (what a
    checkpoint holds).
    """

    def __init__(
        self,
        model: BuildingSegmenter,
        *,
        lr: float,
        weight_decay: float,
        total_steps: int,
        device: torch.device,
        amp: torch.dtype | None,
        threshold: float,
        iou_loss_weight: float,
        loss_options: LossOptions | None = None,
        frozen: Sequence[torch.nn.Module] = (),
        freeze_norm: bool = False,
        ema: float = 0.0,
    ):
        self.model = model
        self.lr = lr
        self.device = device
        self.amp = amp
        self.threshold = threshold
        self.iou_loss_weight = iou_loss_weight
        self.loss_options = loss_options or LossOptions()
        self.frozen = list(frozen)
        self.freeze_norm = freeze_norm
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.plan = WarmupCosine(total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.plan)
        self.ema = _Ema(model, ema) if ema > 0 else None
        self.steps_done = 0

    def train_mode(self) -> None:
        self.model.train()
        for m in self.frozen:
            m.eval()
        if self.freeze_norm:  # keep the starting model's normalisation statistics
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def step(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        valid: torch.Tensor,
        where: str,
        replay_from: int | None = None,
    ) -> tuple[float, float]:
        """One optimisation step on a batch; (segmentation loss, IoU-head loss).
        ``replay_from``: see :func:`batch_losses`."""
        seg_loss, iou_loss = batch_losses(
            self.model,
            x,
            mask,
            valid,
            self.amp,
            self.loss_options,
            self.steps_done / self.plan.total,
            self.threshold,
            replay_from,
        )
        loss = seg_loss + self.iou_loss_weight * iou_loss
        check_finite(loss, where, self.lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.steps_done += 1
        return seg_loss.item(), iou_loss.item()

    @property
    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def validate(self, loader, state: dict | None = None) -> dict:
        """Scores on held-out tiles, with the live weights or, given, another ``state`` (the
        weight average), which is swapped in and out again."""
        if state is not None:
            live = {k: v.clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(state)
        scores = validate(self.model, loader, self.device, self.threshold, self.amp)
        if state is not None:
            self.model.load_state_dict(live)
        return scores

    def replan(self, total_steps: int) -> None:
        self.plan.replan(total_steps)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def _check_outputs(out: Path, state_path: Path, overwrite: bool, resume: bool) -> None:
    if out.suffix != ".safetensors":
        raise InputError("the model file name must end in .safetensors", path=out)
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


class _EpochRun:
    """``rscrisis train`` in named steps: :meth:`setup`, :meth:`resume`, then per epoch
    :meth:`epoch`, :meth:`validate`, :meth:`checkpoint` and :meth:`replan`, and :meth:`finish`.
    The optimisation itself is a :class:`Trainer`'s."""

    def __init__(
        self,
        tilesets: Sequence[str | Path],
        out: Path,
        config: TrainConfig,
        init: str | Path | None,
        progress: Progress,
        extra_training_meta: dict | None,
    ):
        self.tilesets = tilesets
        self.out = out
        self.config = config
        self.init = init
        self.progress = progress
        self.extra_training_meta = extra_training_meta or {}
        self.state_path = sidecar(out, ".state.pt")
        # the best epoch so far lives under a hidden name until the run ends: a final-named
        # model file is always a finished run's (an interrupted run keeps it, for --resume)
        self.best_path = out.with_name(f".{out.name.removesuffix('.safetensors')}.best.safetensors")
        self.t_start = time.perf_counter()
        self.history: list[dict] = []
        self.best_score, self.best_epoch, self.start_epoch = -math.inf, 0, 0
        self.epochs_without_gain = 0
        self.resumed = False
        self.seen = 0
        self.t_train = 0.0

    def setup(self) -> None:
        """Seed, pick the device, load and split the tiles, build (or transfer) the model,
        freeze what the config freezes, and make the loaders and the :class:`Trainer`."""
        config = self.config
        seed_everything(config.seed)
        if config.threads:
            torch.set_num_threads(config.threads)
        device = resolve_device(config.device)
        table = load_tiles(self.tilesets, need_masks=True)
        frame = table.frame
        train_idx, val_idx, dropped = spatial_split(
            frame, config.val_fraction, config.block_tiles, config.seed
        )
        if config.max_tiles and len(train_idx) > config.max_tiles:
            rng = np.random.default_rng(config.seed)
            train_idx = np.sort(rng.choice(train_idx, config.max_tiles, replace=False))
        model, self.meta, self.history_before, self.training_before = self._model(
            table, frame, train_idx
        )
        model.threshold = config.threshold
        model.to(device)
        frozen = _freeze(model, config)
        mean, std = self.meta.mean, self.meta.std

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

        self.gen = torch.Generator().manual_seed(config.seed)
        self.train_set = dataset(train_idx, config.augment)
        self.train_loader = torch.utils.data.DataLoader(
            self.train_set,
            batch_size=config.batch_size,
            shuffle=True,
            generator=self.gen,
            drop_last=len(train_idx) > config.batch_size,
        )
        self.val_loader = (
            torch.utils.data.DataLoader(dataset(val_idx, False), batch_size=config.batch_size)
            if len(val_idx)
            else None
        )
        self.steps_per_epoch = max(1, len(self.train_loader))
        self.trainer = Trainer(
            model,
            lr=config.lr,
            weight_decay=config.weight_decay,
            total_steps=config.epochs * self.steps_per_epoch,
            device=device,
            amp=autocast_dtype(device, config.precision),
            threshold=config.threshold,
            iou_loss_weight=config.iou_loss_weight,
            loss_options=LossOptions.of(config),
            frozen=frozen,
            freeze_norm=config.freeze_norm,
        )
        self.result = TrainResult(
            model=str(self.out),
            train_tiles=len(train_idx),
            val_tiles=len(val_idx),
            buffer_dropped_tiles=len(dropped),
            device=str(device),
            planned_epochs=config.epochs,
        )
        resolved = [str(Path(t).resolve()) for t in self.tilesets]
        before = self.training_before.get("pretraining_tilesets", [])
        self.train_meta = {
            "tilesets": [str(t) for t in self.tilesets],
            # what finetune replays so a few new tiles do not wipe out what was learnt here
            "pretraining_tilesets": (
                resolved if self.init is None else list(dict.fromkeys(before + resolved))
            ),
            "config": config.model_dump(mode="json"),
            "init": None if self.init is None else str(self.init),
            "train_tiles": len(train_idx),
            "val_tiles": len(val_idx),
            **self.extra_training_meta,
        }

    def _model(self, table, frame, train_idx):
        """(model, metadata, earlier history, earlier lineage): fresh, or from ``--init``."""
        config = self.config
        if self.init is not None:
            model, init_meta = load_model(self.init)
            check_bands(init_meta, table.band_count, self.tilesets[0])
            if config.encoder != init_meta.encoder:
                log.info("--init model uses encoder %s; --encoder is ignored", init_meta.encoder)
            mean, std, encoder = init_meta.mean, init_meta.std, init_meta.encoder
            history_before, training_before = list(init_meta.history), dict(init_meta.training)
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
        if self.init is None:
            model = build_model(meta)
        elif config.transfer != "all":
            model = _transfer(model, meta, config.transfer)
        return model, meta, history_before, training_before

    def resume(self) -> None:
        """Continue an interrupted run exactly: weights, optimiser, schedule, history, the
        early-stopping counter and every random stream."""
        state = _load_state(self.state_path, self.trainer.device)
        try:
            self.trainer.load_state_dict(state)
            self.history = json.loads(state["history"])
            self.best_score, self.best_epoch = float(state["best_score"]), int(state["best_epoch"])
            self.start_epoch = int(state["epoch"])
            self.epochs_without_gain = int(state.get("epochs_without_gain", 0))
            augment = self.train_set.augment
            _restore_rng(json.loads(state["rng"]), self.gen, state, augment)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise _state_error(self.state_path, f"it does not match this run ({exc})") from exc
        if self.best_epoch and not self.best_path.exists():
            raise _state_error(
                self.state_path, f"the best model so far ({self.best_path.name}) is gone"
            )
        self.resumed = True
        self.trainer.steps_done = self.start_epoch * self.steps_per_epoch
        log.info("resuming at epoch %d", self.start_epoch + 1)

    def epoch(self, epoch: int) -> dict:
        """One pass over the training tiles; the epoch's history row."""
        trainer, config = self.trainer, self.config
        trainer.train_mode()
        t0 = time.perf_counter()
        losses = []
        for x, mask, valid in self.train_loader:
            x, mask, valid = x.to(trainer.device), mask.to(trainer.device), valid.to(trainer.device)
            where = f"epoch {epoch + 1}, step {trainer.steps_done + 1}"
            losses.append(trainer.step(x, mask, valid, where))
            self.seen += len(x)
            self.progress(
                trainer.steps_done,
                trainer.plan.total,
                f"epoch {epoch + 1}/{config.epochs} loss {np.mean([a for a, _ in losses]):.3f}",
            )
        self.t_train += time.perf_counter() - t0
        return {
            "epoch": epoch + 1,
            "seg_loss": round(float(np.mean([a for a, _ in losses])), 5),
            "iou_loss": round(float(np.mean([b for _, b in losses])), 5),
            "lr": trainer.current_lr,
            "seconds": round(time.perf_counter() - t0, 2),
        }

    def validate(self, row: dict) -> float:
        """Score the epoch on the validation tiles (into ``row``); without any, the training
        loss decides which epoch is best."""
        if self.val_loader is None:
            return -row["seg_loss"]
        row.update({k: _round(v) for k, v in self.trainer.validate(self.val_loader).items()})
        self.progress(
            self.trainer.steps_done,
            self.trainer.plan.total,
            f"epoch {row['epoch']}/{self.config.epochs} "
            f"loss {row['seg_loss']:.3f} val IoU {row['val_iou']:.3f}",
        )
        return row["val_iou"]

    def checkpoint(self, row: dict, score: float) -> None:
        """Keep the best model so far (hidden name), the resumable state and the history."""
        self.history.append(row)
        log.info("epoch %s", json.dumps(row))
        if score > self.best_score:
            self.best_score, self.best_epoch = score, row["epoch"]
            self.epochs_without_gain = 0
            meta = self.meta
            meta.history = self.history_before + self.history
            meta.training = {
                **self.training_before,
                **self.train_meta,
                "best_epoch": self.best_epoch,
                "rscrisis_version": __version__,
            }
            if self.training_before:
                meta.training["previous"] = self.training_before
            save_model(self.trainer.model, meta, self.best_path)
        else:
            self.epochs_without_gain += 1
        with atomic_path(self.state_path) as tmp:
            torch.save(
                {
                    **self.trainer.state_dict(),
                    "history": json.dumps(self.history),
                    "best_score": self.best_score,
                    "best_epoch": self.best_epoch,
                    "epoch": row["epoch"],
                    "epochs_without_gain": self.epochs_without_gain,
                    "generator": self.gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "rng": json.dumps(random_streams(self.train_set.augment)),
                },
                tmp,
            )
        write_csv_atomic(sidecar(self.out, ".history.csv"), self.history)

    def replan(self, epoch: int, row: dict) -> bool:
        """Whether to stop now: early stopping, the schedule's end, or the time budget. After
        the first timed epoch of a run with ``max_minutes``, the schedule is fitted to the
        budget so the learning rate anneals before time runs out (not reproducible across
        machines)."""
        config = self.config
        if self.epochs_without_gain >= config.patience:
            log.info("early stopping: no improvement for %d epochs", config.patience)
            return True
        elapsed = time.perf_counter() - self.t_start
        if config.max_minutes and epoch == self.start_epoch and not self.resumed:
            fit = int((60 * config.max_minutes - elapsed) // max(row["seconds"], 1e-3)) + 1
            planned = max(epoch + 1, min(config.epochs, fit))
            self.trainer.replan(planned * self.steps_per_epoch)
            self.result.planned_epochs = planned
            log.info("budget of %.1f min: planning %d epochs", config.max_minutes, planned)
        if self.trainer.steps_done >= self.trainer.plan.total:
            return True
        if config.max_minutes and elapsed > 60 * config.max_minutes:
            log.info("stopping: the %.1f min budget is spent", config.max_minutes)
            return True
        return False

    def finish(self) -> TrainResult:
        """Publish the best model under its final name, with the full history (epochs after
        the best included), remove the state, and write ``MODEL.train.json``."""
        from rscrisis.io.pictures import history_plot

        title = f"{self.out.name}: training ({len(self.history)} epochs, best {self.best_epoch})"
        history_plot(self.history, sidecar(self.out, ".history.png"), title)
        best_model, best_meta = load_model(self.best_path)
        best_meta.history = self.history_before + self.history
        save_model(best_model, best_meta, self.out)
        self.best_path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        result = self.result
        result.history = self.history
        result.epochs_run = len(self.history)
        result.best_epoch = self.best_epoch
        result.best = next((r for r in self.history if r["epoch"] == self.best_epoch), {})
        result.images_per_s = round(self.seen / self.t_train, 2) if self.t_train else 0.0
        result.seconds = round(time.perf_counter() - self.t_start, 2)
        write_json_atomic(
            sidecar(self.out, ".train.json"),
            {
                "kind": "rscrisis.train",
                "rscrisis_version": __version__,
                "config": self.config.model_dump(mode="json"),
                "tilesets": [str(t) for t in self.tilesets],
                "init": None if self.init is None else str(self.init),
                "result": result.to_dict(),
            },
        )
        return result


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
    _check_outputs(out, sidecar(out, ".state.pt"), overwrite, resume)
    run = _EpochRun(tilesets, out, config, init, progress, extra_training_meta)
    run.setup()
    if resume:
        run.resume()
    for epoch in range(run.start_epoch, config.epochs):
        row = run.epoch(epoch)
        run.checkpoint(row, run.validate(row))
        if run.replan(epoch, row):
            break
    return run.finish()


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
    replay_norm: str = "current"  # or "source": see FinetuneConfig.replay_norm
    interpolate: float = 1.0  # weight of the fitted weights against the start: see toward_start
    loss: LossOptions = field(default_factory=LossOptions)  # FinetuneConfig's loss options


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


def toward_start(start: dict, state: dict, alpha: float) -> dict:
    """Weights ``alpha`` of the way from ``start`` to ``state`` (WiSE-FT, Wortsman et al.,
    CVPR 2022: a weight-space ensemble of a model and its fine-tuned self). Integer buffers
    (batch-norm step counters) are the fitted ones. ``alpha`` 1 returns ``state``."""
    if alpha >= 1:
        return state
    return {
        k: torch.lerp(start[k], v, alpha) if v.dtype.is_floating_point else v
        for k, v in state.items()
    }


#: the weights cross-fitting chooses among (finetune --interpolate-folds): the start (0), three
#: weight-space ensembles of it with the fine-tuned model, and the fine-tuned model (1)
INTERPOLATION_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def path_confusions(
    model: BuildingSegmenter,
    start: dict,
    fitted: dict,
    check: TileDataset,
    *,
    alphas: Sequence[float] = INTERPOLATION_GRID,
    device: torch.device | None = None,
    threshold: float = 0.5,
    precision: str = "auto",
    batch_size: int = 8,
) -> dict[float, Confusion]:
    """Pixel confusion on ``check`` of the weights each ``alpha`` of the way from ``start`` to
    ``fitted`` (:func:`toward_start`); ``model`` ends with the ``fitted`` weights."""
    device = device or torch.device("cpu")
    amp = fast_dtype(device, precision)
    loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(check, batch_size=batch_size)
    out = {}
    for alpha in alphas:
        model.load_state_dict(toward_start(start, fitted, alpha))
        out[alpha] = _validation_pass(model, loader, device, threshold, amp)[0]
    model.load_state_dict(fitted)
    return out


def random_streams(augment) -> dict:
    """Every random stream of a training run besides torch's (saved as tensors): Python's,
    NumPy's global one and the augmentation pipeline's, as JSON-able data, so ``--resume``
    continues exactly and cross-fitting (``finetune --interpolate-folds``) leaves them as it
    found them (:func:`restore_random_streams`)."""
    import random

    from rscrisis.ml.data import random_state

    py = random.getstate()
    np_state = cast(tuple, np.random.get_state(legacy=True))
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *map(float, np_state[2:])],
        "augment": random_state(augment),
    }


def restore_random_streams(saved: dict, augment) -> None:
    """Put the streams saved by :func:`random_streams` back (a state saved before Python's
    pending Gaussian was kept restores without one)."""
    import random

    from rscrisis.ml.data import restore_random_state

    version, internal, *gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss[0] if gauss else None))
    name, keys, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((name, np.array(keys, np.uint32), int(pos), int(has_gauss), cached))
    restore_random_state(augment, saved["augment"])


def _restore_rng(saved: dict, gen: torch.Generator, state: dict, augment) -> None:
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    restore_random_streams(saved, augment)


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

    With ``plan.replay_norm == "source"``, batch norm frozen and a model that kept its source
    statistics (``adapt --method adabn``), the replayed tiles are normalised with those, and
    the new tiles with the adapted ones.

    With ``plan.interpolate`` below 1, every candidate (each evaluation on ``check``, the end)
    is taken that share of the way from the starting weights to the fitted ones
    (:func:`toward_start`).
    """
    device = device or torch.device("cpu")
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
    source_domain = getattr(replay, "source_domain", None)
    by_domain = bool(
        n_replay
        and freeze_norm
        and plan.replay_norm == "source"
        and model.has_source_norm
        and source_domain is not None
        and source_domain.any()
    )
    trainer = Trainer(
        model,
        lr=plan.lr,
        weight_decay=plan.weight_decay,
        total_steps=plan.steps,
        device=device,
        amp=fast_dtype(device, plan.precision),
        threshold=meta.threshold,
        iou_loss_weight=plan.iou_loss_weight,
        loss_options=plan.loss,
        frozen=frozen,
        freeze_norm=freeze_norm,
        ema=plan.ema,
    )

    def score(state: dict | None = None) -> dict:
        if check is None or not len(check):
            return {}
        loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
            check, batch_size=plan.batch_size
        )
        return trainer.validate(loader, state)

    before = score()
    best_score = before.get("val_iou", -math.inf) if select_on_check else -math.inf
    start_state = (
        {k: v.detach().clone() for k, v in model.state_dict().items()}
        if select_on_check or plan.interpolate < 1
        else None
    )
    best_state = start_state if select_on_check else None

    def candidate(state: dict | None) -> dict | None:
        """The weights a stop here would keep: the EMA's or the model's, toward the start."""
        if plan.interpolate >= 1:
            return state
        assert start_state is not None
        return toward_start(start_state, state or model.state_dict(), plan.interpolate)

    chosen = "start" if select_on_check else "final"
    history: list[dict] = []
    losses: list[tuple[float, float]] = []
    t_train, drawn_new, drawn_replay = 0.0, 0, 0
    for step in range(plan.steps):
        trainer.train_mode()
        t0 = time.perf_counter()
        picks = [new[int(i)] for i in rng.choice(len(new), size=n_new, p=weights)]
        replay_from = None
        if n_replay:
            assert replay is not None
            drawn = rng.integers(0, len(replay), size=n_replay)
            if by_domain:  # the source domain's tiles last, normalised with its statistics
                assert source_domain is not None
                drawn = drawn[np.argsort(source_domain[drawn], kind="stable")]
                replay_from = n_new + int((~source_domain[drawn]).sum())
            picks += [replay[int(i)] for i in drawn]
        drawn_new += n_new
        drawn_replay += n_replay
        x, mask, valid = stack_items([_fit_to(item, size, rng) for item in picks], device)
        seg_loss, iou_loss = trainer.step(x, mask, valid, f"step {step + 1}", replay_from)
        losses.append((seg_loss, iou_loss))
        t_train += time.perf_counter() - t0
        last = step + 1 == plan.steps
        if (step + 1) % plan.eval_every == 0 or last:
            row = {
                "step": step + 1,
                "seg_loss": round(float(np.mean([a for a, _ in losses])), 5),
                "iou_loss": round(float(np.mean([b for _, b in losses])), 5),
                "lr": trainer.current_lr,
            }
            losses = []
            if select_on_check or last:
                state = candidate(trainer.ema.state if trainer.ema is not None else None)
                row.update({k: _round(v) for k, v in score(state).items()})
                if select_on_check and row.get("val_iou", -math.inf) > best_score:
                    best_score = row["val_iou"]
                    best_state = {
                        k: v.detach().clone() for k, v in (state or model.state_dict()).items()
                    }
                    chosen = f"step {step + 1}"
            history.append(row)
            log.info("fine-tuning %s", json.dumps(row))
        progress(step + 1, plan.steps, f"step {step + 1}/{plan.steps} loss {seg_loss:.3f}")
    if select_on_check:
        assert best_state is not None
        model.load_state_dict(best_state)
    else:
        final = candidate(trainer.ema.state if trainer.ema is not None else None)
        if final is not None:
            model.load_state_dict(final)
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
