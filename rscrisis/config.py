"""Resolved configurations: every default of every command lives here, once.

The CLI reads its option defaults from these models, the library validates with them, and each
command writes the resolved model as JSON next to its outputs so a run can be reproduced. This
module must stay light (pydantic only): it is imported on the ``rscrisis --help`` path.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Compression = Literal["deflate", "lzw", "zstd", "jpeg", "none"]
ResamplingName = Literal["nearest", "bilinear", "cubic", "average", "lanczos"]


class _Config(BaseModel):
    # allow_inf_nan=False: "--lr inf" or "--resolution nan" pass a "> 0" check otherwise
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TileConfig(_Config):
    """How ``rscrisis tile`` cuts scenes into a tile set."""

    size: int = Field(256, ge=16, le=8192, description="tile width and height in pixels")
    overlap: int = Field(0, ge=0, description="pixels shared by neighbouring tiles")
    min_valid: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="skip tiles whose valid (not nodata, not padding) pixel fraction is below "
        "this; tiles with no valid pixel are always skipped",
    )
    bands: tuple[int, ...] | None = Field(
        None, description="1-based source bands to keep, in output order (default: all but alpha)"
    )
    resolution: float | None = Field(
        None, gt=0, description="resample to this ground resolution in metres (default: native)"
    )
    resampling: ResamplingName = Field("bilinear", description="resampling for --resolution")
    compress: Compression = Field("deflate", description="GeoTIFF compression of image tiles")
    all_touched: bool = Field(
        False, description="burn every pixel a polygon touches (default: pixel centres inside)"
    )
    workers: int = Field(2, ge=1, le=64, description="threads that encode and write tiles")
    max_output_gb: float = Field(
        100.0,
        gt=0,
        description="refuse a run whose tiles would exceed this many GB, uncompressed (a "
        "wrong --resolution or a damaged header otherwise fills the disk)",
    )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> TileConfig:
        if self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self

    @property
    def stride(self) -> int:
        return self.size - self.overlap


class SyntheticConfig(_Config):
    """How ``rscrisis sample-data`` generates the synthetic scenes shipped in sample_data/."""

    seed: int = Field(
        7, description="random seed; the same seed gives the same imagery and footprints"
    )
    size_a: int = Field(
        1536, ge=256, le=8192, description="side in pixels of scene A (pretraining area)"
    )
    size_b: int = Field(
        1024, ge=256, le=8192, description="side in pixels of scene B (new crisis area)"
    )
    gsd: float = Field(0.3, gt=0.01, le=10, description="ground sampling distance in metres")
    epsg: int = Field(32645, description="projected CRS of the scenes (UTM 45N: Nepal)")
    jpeg_quality: int = Field(88, ge=10, le=100, description="JPEG quality of the scene GeoTIFFs")


class NoiseConfig(_Config):
    """OpenStreetMap-like label noise: what ``rscrisis noise`` adds to footprints, and what
    sample-data's area A labels carry (rscrisis.geo.label_noise)."""

    drop: float = Field(0.15, ge=0, le=1, description="fraction of buildings removed")
    global_shift_m: tuple[float, float] = Field(
        (1.2, -0.9), description="offset shared by all outlines, x and y in metres"
    )
    jitter_m: float = Field(0.6, ge=0, description="std of an extra per-building offset (m)")
    buffer_std_m: float = Field(0.35, ge=0, description="std of per-building erosion/dilation (m)")
    simplify_m: float = Field(0.5, ge=0, description="Douglas-Peucker tolerance: cut corners (m)")
    false_blobs: float = Field(
        0.03, ge=0, le=1, description="false polygons added, as a fraction of the building count"
    )
    seed: int = Field(0, description="random seed; the same seed gives the same noise")


def first_problem(exc, where: str) -> tuple[str, str]:
    """(dotted place, message) of a pydantic ValidationError's first error, ``where`` when it
    is the whole input: the one way options, model metadata and manifests name what is wrong."""
    first = exc.errors()[0]
    place = ".".join(str(p) for p in first["loc"]) or where
    return place, first["msg"].removeprefix("Value error, ")


DeviceName = Literal["auto", "cpu", "cuda"]
LossName = Literal["bce-dice", "sce", "bootstrap"]
TransferName = Literal["all", "encoder", "encoder+decoder"]
PrecisionName = Literal["auto", "fp32", "bf16"]


# the noise-robust options, shared by train (off) and pretrain (on): one definition each
def _loss_field(default: str):
    return Field(
        default,
        description="bce-dice; sce: symmetric cross-entropy + Dice; bootstrap: soft "
        "bootstrapping + Dice (the last two resist label noise)",
    )


def _smoothing_field(default: float):
    return Field(default, ge=0, lt=1, description="targets 1 - e/2 and e/2 instead of 1 and 0")


def _weighting_field(default: float):
    return Field(
        default,
        ge=0,
        le=1,
        description="down-weight pixels where the model confidently disagrees with the label "
        "by up to this much, ramped in over training (0: off)",
    )


def _edge_field(default: int):
    return Field(
        default, ge=0, le=16, description="ignore pixels within this many px of label outlines"
    )


class ComputeConfig(_Config):
    """Where a command's torch work runs (every command that loads a model)."""

    device: DeviceName = Field("auto", description="auto picks cuda when available")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: all)")


class FittingConfig(ComputeConfig):
    """What every training of a model shares: ``train``/``pretrain`` (epochs) and ``finetune``
    (a budget of steps, and every round of ``simulate``)."""

    batch_size: int = Field(8, ge=1, description="tiles per optimisation step")
    iou_loss_weight: float = Field(
        0.5, ge=0.0, description="weight of the predicted-IoU regression loss"
    )
    augment: bool = Field(True, description="flips, 90° rotations, brightness/contrast, scale")
    freeze_encoder: bool = Field(False, description="train only decoder and heads")
    freeze_stages: int = Field(0, ge=0, description="freeze the first N encoder stages (0: none)")
    transfer: TransferName = Field(
        "all",
        description="what the starting model (train --init, finetune) passes on: all, encoder, "
        "or encoder+decoder (encoder and the 2 deepest of 5 decoder blocks); the rest starts "
        "fresh",
    )
    freeze_transferred: bool = Field(
        False, description="freeze the transferred part (for all: all but the heads)"
    )
    freeze_norm: bool = Field(
        False,
        description="keep batch-norm statistics fixed (fine-tuning on few tiles: small "
        "batches give noisy statistics)",
    )
    seed: int = Field(0, description="random seed (runs are deterministic on CPU)")
    loss: LossName = _loss_field("bce-dice")
    label_smoothing: float = _smoothing_field(0.0)
    confidence_weighting: float = _weighting_field(0.0)
    edge_ignore: int = _edge_field(0)


class TrainConfig(FittingConfig):
    """How ``rscrisis train`` and ``pretrain`` fit a model to tile sets, epoch by epoch."""

    encoder: str = Field("resnet18", description="encoder of the U-Net (see rscrisis models)")
    epochs: int = Field(30, ge=1, description="maximum number of epochs")
    lr: float = Field(
        1e-3, gt=0, description="peak learning rate of AdamW (warm-up, then cosine decay)"
    )
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    val_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="fraction of tiles held out, in spatial blocks"
    )
    block_tiles: int = Field(3, ge=1, description="side of the spatial validation blocks, in tiles")
    threshold: float = Field(0.5, gt=0, lt=1, description="probability threshold for masks")
    patience: int = Field(
        8, ge=1, description="stop after this many epochs without validation improvement"
    )
    precision: PrecisionName = Field(
        "auto", description="auto: bf16 autocast on CUDA when supported, fp32 on CPU"
    )
    max_tiles: int | None = Field(
        None, ge=1, description="use at most this many training tiles (random, seeded)"
    )
    max_minutes: float | None = Field(
        None, gt=0, description="stop after the epoch that crosses this wall-clock budget"
    )


class PretrainConfig(TrainConfig):
    """``rscrisis pretrain``: training on noisy labels (e.g. OSM), with robust defaults.

    Symmetric cross-entropy, label smoothing 0.1, confidence weighting 0.8 and a 2 px ignore
    band around outlines; see rscrisis.ml.losses for why each helps and the README for the
    measurement behind these defaults.
    """

    loss: LossName = _loss_field("sce")
    label_smoothing: float = _smoothing_field(0.1)
    confidence_weighting: float = _weighting_field(0.8)
    edge_ignore: int = _edge_field(2)


EngineName = Literal["auto", "torch", "onnxruntime"]


class InferenceConfig(ComputeConfig):
    """Where and by what a prediction runs (tile sets and scenes)."""

    engine: EngineName = Field(
        "auto",
        description="what runs the model: auto picks ONNX Runtime on CPUs without native bf16 "
        "for jobs of 200 windows or more (1.3-1.7x faster there, the same outputs), PyTorch "
        "elsewhere",
    )


class PredictConfig(InferenceConfig):
    """How ``rscrisis predict`` runs a model over a tile set."""

    batch_size: int = Field(8, ge=1, description="tiles per forward pass")
    mc_samples: int = Field(
        0, ge=0, description="MC-dropout samples for BALD and sample agreement (0: off)"
    )
    tta: bool = Field(
        True,
        description="average the 8 flips/90° rotations and report how much they disagree: "
        "their agreement is the IoU estimate rank uses (the best measured; README: run 6). On "
        "by default for tile sets, off for scenes (8x the compute: --no-tta for a quick tile "
        "set, --tta for a scene)",
    )
    seed: int = Field(0, description="random seed for MC dropout")


ProbFormat = Literal["uint8", "float16"]


class SceneConfig(InferenceConfig):
    """How ``rscrisis predict`` turns a whole scene into a building map."""

    window: int | None = Field(
        None, ge=32, description="window side in pixels, a multiple of 32 (default: model tile)"
    )
    overlap: int | None = Field(
        None,
        ge=0,
        description="pixels shared by neighbouring windows, blended with a cosine ramp "
        "(default: a quarter of the window)",
    )
    batch_size: int = Field(8, ge=1, description="windows per forward pass")
    resolution: float | None = Field(
        None,
        gt=0,
        description="run at this resolution in metres (default: the model's, when the scene "
        "differs from it by more than 10 %)",
    )
    bands: tuple[int, ...] | None = Field(
        None, description="1-based scene bands to feed the model (default: the model's bands)"
    )
    prob_format: ProbFormat = Field(
        "uint8",
        description="probability raster: uint8 (p x 254, 255 = nodata) or float16 (NaN nodata)",
    )
    min_area: float = Field(2.0, ge=0, description="drop buildings smaller than this (m²)")
    simplify: float = Field(
        0.3, ge=0, description="Douglas-Peucker tolerance of building outlines (m; 0: off)"
    )
    max_area: float = Field(
        100_000.0,
        gt=0,
        description="a connected region larger than this (m²) is not one building: it is "
        "written as parts cut at strip borders, flagged oversize, which keeps memory bounded",
    )
    regularize: bool = Field(
        False, description="square building outlines (edges parallel/perpendicular)"
    )
    geojson: bool = Field(False, description="also write buildings.geojson")
    tta: bool = Field(
        False,
        description="average the 8 flips/90° rotations per window (8x the compute; off by "
        "default for scenes, on for tile sets); their disagreement feeds the per-window "
        "uncertainty layer",
    )
    precision: PrecisionName = Field(
        "auto",
        description="auto: bf16 autocast on CUDA GPUs and on CPUs with native bf16 "
        "(AVX512-BF16, AMX), fp32 elsewhere",
    )
    channels_last: bool = Field(
        True, description="channels-last memory format (faster oneDNN convolutions on CPU)"
    )
    prefetch: int = Field(2, ge=1, le=16, description="batches read ahead by the reader thread")
    max_output_gb: float = Field(
        100.0,
        gt=0,
        description="refuse a scene whose maps would exceed this many GB, uncompressed (a "
        "wrong --resolution or a damaged header otherwise fills the disk)",
    )

    @model_validator(mode="after")
    def _window_shape(self) -> SceneConfig:
        if self.window is not None and self.window % 32:
            raise ValueError(f"window ({self.window}) must be a multiple of 32")
        if self.window is not None and self.overlap is not None and self.overlap >= self.window:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than window")
        return self


FormulaName = Literal["entropy-iou", "entropy", "margin", "iou", "soft-iou", "bald", "random"]
DiversityName = Literal["none", "coreset", "cluster"]


class RankConfig(_Config):
    """How ``rscrisis rank`` picks and exports an annotation batch."""

    formula: FormulaName = Field("entropy-iou", description="priority formula (see rank --help)")
    top: int = Field(20, ge=1, description="tiles in the batch")
    diversity: DiversityName = Field(
        "none",
        description="coreset: greedy k-center on embeddings; cluster: k-means, best per "
        "cluster (both among the top pool-factor x K by priority); none: the top K",
    )
    pool_factor: int = Field(
        5, ge=1, description="diversity chooses among the top pool-factor x K tiles"
    )
    spacing: float = Field(
        0.0,
        ge=0,
        description="minimum ground distance between chosen tiles in metres (0: they must not "
        "touch or overlap)",
    )
    spatial: bool = Field(True, description="keep chosen tiles apart on the ground (see --spacing)")
    min_valid: float = Field(
        0.5, ge=0, le=1, description="skip tiles with less valid (not nodata) area than this"
    )
    skip_empty: bool = Field(False, description="skip tiles where no building is predicted")
    exclude: tuple[str, ...] = Field(
        (), description="earlier batch folders whose tiles are not proposed again"
    )
    seed: int = Field(0, description="seed of the random formula and of k-means")
    min_area: float = Field(2.0, ge=0, description="pre-annotation: drop smaller buildings (m²)")
    simplify: float = Field(0.3, ge=0, description="pre-annotation simplification (m)")
    regularize: bool = Field(True, description="pre-annotation outlines squared")
    label_studio: bool = Field(
        False, description="also write a Label Studio import file and labelling config"
    )
    label_studio_prefix: str = Field(
        "/data/local-files/?d={batch}/",
        min_length=1,
        description="Label Studio image URL prefix; {batch} is the batch folder's name (the "
        "default serves the folder holding the batches as the local-files root)",
    )


class FinetuneConfig(FittingConfig):
    """How ``rscrisis finetune`` (and every round of ``simulate``) adapts a model to corrected
    tiles; see rscrisis.loop.finetune for the procedure and README for the measurements."""

    steps: int = Field(
        150,
        ge=1,
        description="optimisation steps; each draws a batch with replacement, so 5 tiles get "
        "as much optimisation as 50",
    )
    lr_scale: float = Field(
        0.3,
        gt=0,
        description="learning rate = this x the starting model's training learning rate",
    )
    ema: float = Field(
        0.98,
        ge=0,
        lt=1,
        description="keep an exponential moving average of the weights with this decay per "
        "step (0: the last step's weights)",
    )
    freeze_stages: int = Field(
        1, ge=0, description="freeze the first N encoder stages (low-level filters transfer)"
    )
    interpolate: float = Field(
        1.0,
        gt=0,
        le=1,
        description="keep the weights this share of the way from the starting model to the "
        "fine-tuned one (WiSE-FT; 1: the fine-tuned weights); only with --transfer all",
    )
    prior_tiles: float = Field(
        0.0,
        ge=0,
        description="weigh the starting model as N labelled tiles: keep the weights n / (n + "
        "N) of the way from it to the fine-tuned ones, n the tiles this fine-tuning learns "
        "from (in simulate, every tile revealed so far); 0: off; instead of --interpolate; "
        "only with --transfer all",
    )
    interpolate_folds: int = Field(
        0,
        ge=0,
        description="when no held-out slice can be trusted, choose --interpolate (0: keep the "
        "start, 0.25, 0.5, 0.75 or 1) by K-fold cross-fitting over the labelled tiles: K more "
        "fine-tunings, each scored on the tiles it did not see (0: off; at least 2); only "
        "with --transfer all",
    )
    freeze_norm: bool = Field(
        True,
        description="keep the starting model's batch-norm statistics (a few tiles give noisy ones)",
    )
    replay: tuple[str, ...] = Field(
        (),
        description="earlier labelled tile sets mixed in so the model does not forget "
        "(the labels of batches the starting model learnt from are replayed automatically)",
    )
    replay_pretraining: bool = Field(
        True,
        description="also replay the tile sets the model was (pre)trained on, when they are "
        "still on disk",
    )
    replay_ratio: float = Field(
        1.0, ge=0, description="replayed tiles per new tile in each batch (0 disables replay)"
    )
    replay_targets: Literal["labels", "model"] = Field(
        "labels",
        description="what the replayed tile sets the model was (pre)trained on teach: their "
        "labels, or the starting model's map of them (replay by distillation, as in Learning "
        "without Forgetting: their label noise, such as the buildings OSM misses, is not "
        "learnt again); corrected batches and other --replay sets replay their labels",
    )
    replay_norm: Literal["current", "source"] = Field(
        "current",
        description="batch-norm statistics for the replayed pretraining tiles of a model "
        "adapted with adabn: the adapted ones (current) or the pretraining area's (source), "
        "which adapt keeps in the model file",
    )
    max_empty_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="at most this share of the new tiles drawn hold no building, when other "
        "new tiles do",
    )
    val_fraction: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="held-out slice of the new tiles (spatial blocks) on which the starting "
        "model and the fine-tuned one compete; used only when it can be trusted",
    )
    min_val_tiles: int = Field(
        4,
        ge=1,
        description="a held-out slice is trusted with at least this many tiles, two of them "
        "with buildings; otherwise every tile trains and the budget is fixed",
    )
    eval_every: int = Field(25, ge=1, description="steps between evaluations on a held-out slice")
    calibrate: bool = Field(
        True,
        description="refit the IoU calibrator on the corrected tiles (rscrisis.ml.calibration)",
    )
    precision: PrecisionName = Field(
        "auto",
        description="auto: bf16 autocast on CUDA GPUs and on CPUs with native bf16 "
        "(AVX512-BF16, AMX), fp32 elsewhere",
    )
    repair: bool = Field(False, description="repair invalid corrected polygons instead of refusing")

    @model_validator(mode="after")
    def _folds(self) -> FinetuneConfig:
        if self.interpolate_folds == 1:
            raise ValueError("interpolate_folds must be 0 (off) or at least 2")
        chosen = [
            name
            for name, on in (
                ("interpolate", self.interpolate < 1),
                ("prior_tiles", self.prior_tiles > 0),
                ("interpolate_folds", self.interpolate_folds > 0),
            )
            if on
        ]
        if len(chosen) > 1:
            raise ValueError(f"give one of {' and '.join(chosen)}: each sets the interpolation")
        return self


AdaptMethod = Literal["adabn", "selftrain", "simsiam"]
#: The order adaptations run in when several are asked for: the encoder's self-supervised
#: features first, then batch-norm statistics of the new area, then pseudo-labels made by the
#: adapted model (training them keeps those statistics frozen).
ADAPT_ORDER: tuple[str, ...] = ("simsiam", "adabn", "selftrain")


class AdaptConfig(ComputeConfig):
    """How ``rscrisis adapt`` adapts a model to a new area's unlabelled tiles; see
    rscrisis.ml.adaptation for the methods and README for the measurements behind the defaults."""

    methods: tuple[AdaptMethod, ...] = Field(
        ("adabn",),
        description="adaptations to apply (run in the order simsiam, adabn, selftrain)",
    )
    adabn_passes: int = Field(
        2, ge=1, description="adabn: passes over the tiles (each through a random D4 view)"
    )
    adabn_weight: float = Field(
        1.0,
        gt=0,
        le=1,
        description="adabn: share of the new area's statistics in the result (the rest is "
        "the model's own); below 1 trades zero-label IoU for an IoU estimate that keeps more "
        "of its ranking",
    )
    steps: int = Field(
        200,
        ge=1,
        description="selftrain and simsiam: optimisation steps, each a batch drawn "
        "with replacement",
    )
    batch_size: int = Field(8, ge=2, description="selftrain and simsiam: tiles per step")
    lr_scale: float = Field(
        0.3, gt=0, description="learning rate = this x the model's training learning rate"
    )
    ema: float = Field(0.98, ge=0, lt=1, description="weight averaging decay per step (0: off)")
    confidence: float = Field(
        0.9,
        gt=0.5,
        lt=1.0,
        description="selftrain: a pixel is a pseudo-label when the mean probability over the 8 "
        "D4 views is at least this (building) or at most 1 - this (background)",
    )
    max_spread: float = Field(
        0.1,
        gt=0,
        le=0.5,
        description="selftrain: and the views' probabilities differ by at most this (std)",
    )
    replay_ratio: float = Field(
        1.0,
        ge=0,
        description="labelled tiles of the model's pretraining (when on disk) per new tile in "
        "each step: they keep the decoder and heads anchored to real labels",
    )
    seed: int = Field(0, description="random seed (runs are deterministic on CPU)")
    precision: PrecisionName = Field(
        "auto", description="auto: bf16 autocast where the hardware runs it natively"
    )

    @model_validator(mode="after")
    def _methods_once(self) -> AdaptConfig:
        if not self.methods:
            raise ValueError("name at least one adaptation method")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("an adaptation method is listed twice")
        return self

    @property
    def ordered(self) -> tuple[str, ...]:
        return tuple(m for m in ADAPT_ORDER if m in self.methods)


SplitName = Literal["blocks", "band"]


class SimulateConfig(_Config):
    """How ``rscrisis simulate`` replays the annotation loop against an oracle."""

    formulas: tuple[str, ...] = Field(
        ("random", "entropy", "iou", "entropy-iou", "entropy-iou+coreset"),
        description="formulas to compare; FORMULA+coreset or FORMULA+cluster adds diversity",
    )
    rounds: int = Field(3, ge=1, description="annotation rounds after the seed batch")
    batch: int = Field(8, ge=1, description="tiles revealed per round (K)")
    seed_batch: int = Field(
        8, ge=1, description="random tiles revealed first, identical for every formula"
    )
    seeds: tuple[int, ...] = Field((0, 1, 2), description="repetitions (seed batch, training)")
    test_fraction: float = Field(
        0.3, gt=0, lt=1, description="share of tiles held out for testing, in spatial blocks"
    )
    split: SplitName = Field(
        "blocks",
        description="blocks: random square blocks of tiles are the test area; band: the "
        "southernmost band is (wastes less: one row of buffer tiles)",
    )
    block_tiles: int = Field(2, ge=1, description="side of the spatial test blocks, in tiles")
    split_seed: int = Field(0, description="seed of the pool/test split (the same for all runs)")
    spatial: bool = Field(True, description="rank's rule keeping a batch's tiles apart")
    finetune: FinetuneConfig = Field(
        default_factory=lambda: FinetuneConfig(val_fraction=0.0),
        description="fine-tuning each round, as finetune does: from the starting model on every "
        "tile revealed so far (no held-out slice: the oracle's tiles are all training data)",
    )
    ceiling: bool = Field(
        True, description="also fine-tune on every pool tile: the ceiling of the labels"
    )
    mc_samples: int = Field(0, ge=0, description="MC-dropout samples at prediction (for bald)")
    workers: int = Field(
        1,
        ge=1,
        description="run the chains (seed batches, each formula's rounds, ceilings) side by "
        "side in this many processes, each with --threads threads (default: the cores shared "
        "out); the figures are those of a one-worker run with as many threads",
    )
    adapt: AdaptConfig | None = Field(
        None,
        description="adapt the starting model to the pool's unlabelled tiles first (as "
        "rscrisis adapt does); every curve, the start and the ceiling then use the adapted model",
    )

    @model_validator(mode="after")
    def _known_formulas(self) -> SimulateConfig:
        from typing import get_args

        known = set(get_args(FormulaName))
        for f in self.formulas:
            name, _, div = f.partition("+")
            if name not in known or div not in ("", "coreset", "cluster"):
                raise ValueError(
                    f"unknown formula {f!r}: use one of {', '.join(sorted(known))}, optionally "
                    "+coreset or +cluster"
                )
        if len(set(self.formulas)) != len(self.formulas):
            raise ValueError("a formula is listed twice")
        return self
