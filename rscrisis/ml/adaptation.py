"""``rscrisis adapt MODEL TILESETS... --out MODEL2``: adapt a model to a new area before anyone
labels it, from the area's own unlabelled tiles.

After a disaster the imagery of the new area arrives in bulk and its labels a few tiles at a
time. Three adaptations use the imagery alone; each can be used by itself or with the others
(they run in the order below, :data:`rscrisis.config.ADAPT_ORDER`):

* ``simsiam``: continued self-supervised pretraining of the encoder (SimSiam, Chen & He 2021):
  two augmented views of a tile (D4 flip/rotation, scale crop, brightness/contrast, blur) must
  give the same pooled bottleneck features after a projector and a predictor, with a
  stop-gradient on one side. It needs no negatives and no large batch, which is what fits a
  CPU laptop (SimCLR wants hundreds of negatives per batch; BYOL a second, momentum network).
  The projector and predictor are discarded afterwards. So that the decoder and the heads stay
  usable with the moved encoder, every step also takes a supervised step on the model's
  pretraining tiles (their labels, when still on disk; ``replay_ratio``). Our own ~60 lines:
  lightly would add a dependency for one loss and two MLPs.
* ``adabn``: batch-norm statistics re-estimated on the new area (Li et al. 2016): every BN
  layer's running mean and variance are reset and recomputed as the cumulative average over
  ``adabn_passes`` passes of the tiles, each batch through a random D4 view. Nothing is
  trained; it takes seconds.
* ``selftrain``: self-training on confident pseudo-labels. The model predicts every tile under
  the 8 D4 views (:mod:`rscrisis.ml.tta`); a pixel becomes a label only where the views agree
  (their std at most ``max_spread``) and their mean is confident (>= ``confidence`` building,
  <= 1 - ``confidence`` background); every other pixel is ignored. Training on those uses the
  one few-tile path (:func:`rscrisis.ml.training.fit_steps`: a step budget, EMA, the first
  encoder stage and batch-norm statistics frozen), mixed with the pretraining tiles' real
  labels, and without the IoU-head loss (pseudo-labels would teach the head to trust itself).

The output is a complete model: same architecture, head and decoder, the lineage in its
metadata (``training.adaptation``: the tiles, methods, steps and seconds), so ``predict``,
``rank`` and ``finetune`` use it like any other. An IoU calibrator the model carried is
dropped with its samples: they describe the model before adaptation; ``finetune`` fits a new
one from the next corrections. README ("Adapting before labelling") gives
the measurements behind the default.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rscrisis import __version__
from rscrisis.config import AdaptConfig
from rscrisis.errors import InputError
from rscrisis.progress import Progress, no_progress

log = logging.getLogger(__name__)

SIMSIAM_DIM = 256
SIMSIAM_PRED_DIM = 64
#: weight of the SimSiam loss against the supervised replay step (0 leaves replay alone: the
#: benchmark's control for what the self-supervision adds)
SSL_WEIGHT = 1.0
BATCH_INFER = 16


@dataclass
class AdaptResult:
    model: str
    tiles: int
    replay_tiles: int
    methods: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _unlabelled(table, meta, augment=None):
    """The new area's tiles (no masks: every valid pixel is unlabelled) as a TileDataset."""
    from rscrisis.ml.data import TileDataset

    frame = table.frame
    return TileDataset(
        frame.image_path, [None] * len(frame), meta.mean, meta.std, table.dtype, augment=augment
    )


def _stack(dataset, idx):
    from rscrisis.ml.training import stack_items

    return stack_items([dataset[int(i)] for i in idx])


def adabn(
    model,
    dataset,
    passes: int,
    seed: int,
    device,
    progress: Progress = no_progress,
    weight: float = 1.0,
) -> dict:
    """Re-estimate every batch-norm layer's statistics on ``dataset`` (module docstring);
    ``weight`` < 1 keeps that share of the source statistics: weight x new + (1 - weight) x
    old, for the mean and the variance."""
    import torch

    from rscrisis.ml.tta import apply_view

    layers = list(model.norm_layers().values())
    model.keep_source_norm()  # the statistics replayed pretraining tiles can be normalised with
    momenta = [m.momentum for m in layers]
    source = [(m.running_mean.clone(), m.running_var.clone()) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch seen
    model.eval()
    for m in layers:
        m.train()
    rng = np.random.default_rng(seed)
    total = passes * len(range(0, len(dataset), BATCH_INFER))
    done = 0
    with torch.no_grad():
        for _ in range(passes):
            order = rng.permutation(len(dataset)).tolist()
            loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH_INFER, sampler=order)
            for x, _, valid in loader:
                view = int(rng.integers(0, 8))
                model(
                    apply_view(x, view).to(device), apply_view(valid, view).unsqueeze(1).to(device)
                )
                done += 1
                progress(done, total, f"adabn: batch {done}/{total}")
    for m, momentum, (mean, var) in zip(layers, momenta, source, strict=True):
        m.momentum = momentum
        if weight < 1:
            m.running_mean.mul_(weight).add_(mean, alpha=1 - weight)
            m.running_var.mul_(weight).add_(var, alpha=1 - weight)
    model.eval()
    return {
        "layers": len(layers),
        "passes": passes,
        "weight": weight,
        "images": passes * len(dataset),
    }


def pseudo_labels(model, dataset, config: AdaptConfig, device, amp) -> tuple[list, dict]:
    """Per tile a uint8 mask: 1 building, 0 background, 255 ignored (module docstring)."""
    import torch

    from rscrisis.io.tileset import MASK_IGNORE
    from rscrisis.ml.tta import D4, forward_views

    model.eval()
    masks, labelled, positive, total = [], 0, 0, 0
    with torch.no_grad():
        for x, _, valid in torch.utils.data.DataLoader(dataset, batch_size=BATCH_INFER):
            out = forward_views(model, x.to(device), valid.to(device), amp, D4)
            assert out.spread is not None  # several views always have a spread
            prob, spread, v = out.prob.cpu().numpy(), out.spread.cpu().numpy(), valid.numpy()
            agree = spread <= config.max_spread
            mask = np.full(prob.shape, MASK_IGNORE, np.uint8)
            mask[agree & (prob >= config.confidence)] = 1
            mask[agree & (prob <= 1 - config.confidence)] = 0
            mask[~v] = MASK_IGNORE
            for m in mask:
                masks.append(m)
            labelled += int((mask != MASK_IGNORE).sum())
            positive += int((mask == 1).sum())
            total += int(v.sum())
    return masks, {
        "pixels_labelled": round(labelled / max(total, 1), 4),
        "pixels_building": round(positive / max(labelled, 1), 4),
        "tiles_with_buildings": int(sum(bool((m == 1).any()) for m in masks)),
    }


def selftrain(
    model, meta, table, replay, config: AdaptConfig, device, progress: Progress = no_progress
) -> dict:
    """Self-training on confident D4-consistent pseudo-labels (module docstring)."""
    from rscrisis.config import FinetuneConfig
    from rscrisis.ml.data import augmentation
    from rscrisis.ml.device import fast_dtype
    from rscrisis.ml.training import StepPlan, _freeze, fit_steps, training_lr

    amp = fast_dtype(device, config.precision)
    masks, coverage = pseudo_labels(model, _unlabelled(table, meta), config, device, amp)
    new = _unlabelled(table, meta, augment=augmentation(config.seed))
    new.set_masks(masks)
    has_buildings = np.array([bool((m == 1).any()) for m in masks])
    frozen = _freeze(model, FinetuneConfig())
    plan = StepPlan(
        steps=config.steps,
        batch_size=config.batch_size,
        lr=training_lr(meta) * config.lr_scale,
        replay_ratio=config.replay_ratio,
        ema=config.ema,
        eval_every=config.steps,
        iou_loss_weight=0.0,
        seed=config.seed,
        precision=config.precision,
    )
    fitted = fit_steps(
        model,
        meta,
        new,
        has_buildings,
        plan,
        frozen=frozen,
        freeze_norm=True,
        replay=replay,
        device=device,
        tile_size=table.tile_size,
        progress=lambda d, t, s="": progress(d, t, f"selftrain: {s}"),
    )
    for p in model.parameters():
        p.requires_grad_(True)
    return {
        "steps": config.steps,
        **coverage,
        "new_draws": fitted.new_draws,
        "replay_draws": fitted.replay_draws,
        "images_per_s": fitted.images_per_s,
    }


def ssl_views(seed: int, size: int, bands: int):
    """The SimSiam view augmentation for overhead imagery, on [0, 1] floats (no 'up', so D4;
    scale crops; radiometry; blur). Hue and saturation only exist for 3-band imagery."""
    import random

    import albumentations as A

    colour = [A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.8)]
    if bands == 3:
        colour.append(A.HueSaturationValue(10, 20, 0, p=0.5))
    pipeline = A.Compose(
        [
            A.D4(p=1.0),
            A.RandomResizedCrop(size=(size, size), scale=(0.35, 1.0), p=1.0),
            *colour,
            A.GaussianBlur(blur_limit=(3, 7), p=0.4),
        ]
    )
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return pipeline


def simsiam(
    model, meta, table, replay, config: AdaptConfig, device, progress: Progress = no_progress
) -> dict:
    """Continued self-supervised pretraining of the encoder (module docstring)."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm

    from rscrisis.config import FinetuneConfig
    from rscrisis.ml.device import fast_dtype
    from rscrisis.ml.losses import LossOptions
    from rscrisis.ml.training import (
        WarmupCosine,
        _Ema,
        _fit_to,
        _freeze,
        batch_losses,
        check_finite,
        stack_items,
        training_lr,
    )

    amp = fast_dtype(device, config.precision)
    frame, size = table.frame, table.tile_size
    views = [
        _unlabelled(table, meta, augment=ssl_views(config.seed + k, size, table.band_count))
        for k in (0, 100)
    ]
    dim = model.embedding_dim
    projector = nn.Sequential(
        nn.Linear(dim, SIMSIAM_DIM, bias=False),
        nn.BatchNorm1d(SIMSIAM_DIM),
        nn.ReLU(inplace=True),
        nn.Linear(SIMSIAM_DIM, SIMSIAM_DIM, bias=False),
        nn.BatchNorm1d(SIMSIAM_DIM, affine=False),
    ).to(device)
    predictor = nn.Sequential(
        nn.Linear(SIMSIAM_DIM, SIMSIAM_PRED_DIM, bias=False),
        nn.BatchNorm1d(SIMSIAM_PRED_DIM),
        nn.ReLU(inplace=True),
        nn.Linear(SIMSIAM_PRED_DIM, SIMSIAM_DIM),
    ).to(device)
    frozen = _freeze(model, FinetuneConfig())
    lr = training_lr(meta) * config.lr_scale
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": params, "lr": lr},
            {"params": [*projector.parameters(), *predictor.parameters()], "lr": lr * 10},
        ],
        weight_decay=1e-4,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(config.steps))
    ema = _Ema(model, config.ema) if config.ema > 0 else None
    rng = np.random.default_rng(config.seed)
    n_replay = 0
    if replay is not None and len(replay):
        n_replay = max(
            1, round(config.batch_size * config.replay_ratio / (1 + config.replay_ratio))
        )

    def train_mode() -> None:
        model.train()
        for m in frozen:
            m.eval()
        for m in model.modules():  # statistics are adabn's business
            if isinstance(m, _BatchNorm):
                m.eval()
        projector.train()
        predictor.train()

    def embed(x, valid):
        feats = model.unet.encoder(x)[-1]
        v = F.interpolate(valid.unsqueeze(1).float(), size=feats.shape[-2:], mode="area")
        return (feats * v).sum((2, 3)) / v.sum((2, 3)).clamp_min(1e-3)

    losses, t_train = [], 0.0
    for step in range(config.steps):
        train_mode()
        t0 = time.perf_counter()
        idx = rng.integers(0, len(frame), size=config.batch_size)
        x1, _, v1 = _stack(views[0], idx)
        x2, _, v2 = _stack(views[1], idx)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            z1 = projector(embed(x1.to(device), v1.to(device)).float())
            z2 = projector(embed(x2.to(device), v2.to(device)).float())
            p1, p2 = predictor(z1), predictor(z2)
        ssl = (
            -(
                F.cosine_similarity(p1.float(), z2.detach().float()).mean()
                + F.cosine_similarity(p2.float(), z1.detach().float()).mean()
            )
            / 2
        )
        loss = SSL_WEIGHT * ssl
        if n_replay:
            picks = rng.integers(0, len(replay), n_replay)
            x, m, v = stack_items([_fit_to(replay[int(i)], size, rng) for i in picks], device)
            seg, iou = batch_losses(
                model, x, m, v, amp, LossOptions(), step / config.steps, meta.threshold
            )
            loss = loss + seg + 0.5 * iou
        check_finite(loss, f"simsiam step {step + 1}", lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(model)
        t_train += time.perf_counter() - t0
        losses.append(float(ssl.item()))
        progress(
            step + 1, config.steps, f"simsiam: step {step + 1}/{config.steps} loss {ssl.item():.3f}"
        )
    if ema is not None:
        model.load_state_dict(ema.state)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    k = max(1, len(losses) // 10)
    return {
        "steps": config.steps,
        "ssl_loss_first": round(float(np.mean(losses[:k])), 4),
        "ssl_loss_last": round(float(np.mean(losses[-k:])), 4),
        "replay_per_step": n_replay,
        "images_per_s": round(config.steps * (2 * config.batch_size + n_replay) / t_train, 2),
    }


def adapt(
    model_path: str | Path,
    tilesets: Sequence[str | Path],
    out: str | Path,
    *,
    config: AdaptConfig | None = None,
    overwrite: bool = False,
    progress: Progress = no_progress,
) -> AdaptResult:
    """Adapt ``model_path`` to the unlabelled tiles of ``tilesets`` into ``out``."""
    import torch

    from rscrisis.io.outputs import write_json_atomic
    from rscrisis.ml.data import load_tiles, present_pretraining_tilesets, replay_dataset
    from rscrisis.ml.device import resolve_device, seed_everything
    from rscrisis.ml.model import check_model_out, check_tiles, load_model, save_model
    from rscrisis.ml.training import sidecar

    config = config or AdaptConfig()
    out = check_model_out(out, overwrite)
    tilesets = [Path(t) for t in tilesets]
    if not tilesets:
        raise InputError("name at least one tile set of the new area")
    t_start = time.perf_counter()
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    model, meta = load_model(model_path, device)
    table = load_tiles(tilesets, need_masks=False)
    check_tiles(meta, table, tilesets[0])
    frame = table.frame
    ids = set(frame.tile_id)
    needs_replay = any(m in config.methods for m in ("selftrain", "simsiam"))
    replay = None
    if needs_replay and config.replay_ratio > 0:
        sources = present_pretraining_tilesets(meta.training)
        replay = replay_dataset(sources, meta, ids, config.seed)
    if needs_replay and replay is None and config.replay_ratio > 0:
        log.warning(
            "the model's pretraining tiles are not on disk: %s trains without real labels to "
            "anchor it",
            "/".join(m for m in config.ordered if m != "adabn"),
        )
    records = []
    for method in config.ordered:
        t0 = time.perf_counter()
        if method == "adabn":
            info = adabn(
                model,
                _unlabelled(table, meta),
                config.adabn_passes,
                config.seed,
                device,
                progress,
                weight=config.adabn_weight,
            )
        elif method == "selftrain":
            info = selftrain(model, meta, table, replay, config, device, progress)
        else:
            info = simsiam(model, meta, table, replay, config, device, progress)
        info = {"method": method, **info, "seconds": round(time.perf_counter() - t0, 1)}
        log.info("adapt %s", info)
        records.append(info)

    previous = dict(meta.training)
    # the calibrator maps *this model's* IoU estimates to true IoU; adapted, the model
    # estimates differently, so earlier samples no longer describe it (the next finetune
    # fits a new one from the corrections, measured with the adapted model)
    stale = previous.pop("calibration_samples", [])
    previous.pop("iou_calibrator", None)
    lineage = {
        "from_model": str(model_path),
        "tilesets": [str(Path(t).resolve()) for t in tilesets],
        "tiles": len(frame),
        "methods": records,
        "config": config.model_dump(mode="json"),
        "calibration_samples_dropped": len(stale),
        "rscrisis_version": __version__,
    }
    meta.training = {**previous, "adaptation": [*previous.get("adaptation", []), lineage]}
    save_model(model, meta, out)
    result = AdaptResult(
        model=str(out),
        tiles=len(frame),
        replay_tiles=0 if replay is None else len(replay),
        methods=records,
        seconds=round(time.perf_counter() - t_start, 1),
    )
    write_json_atomic(
        sidecar(out, ".adapt.json"),
        {
            "kind": "rscrisis.adapt",
            "rscrisis_version": __version__,
            "model": str(model_path),
            "tilesets": [str(t) for t in tilesets],
            "config": config.model_dump(mode="json"),
            "result": result.to_dict(),
        },
    )
    return result
