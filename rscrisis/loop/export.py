"""``rscrisis rank``: choose the tiles worth annotating and export them as a batch for people.

Reads a prediction set (scores.gpkg, embeddings.npy, predict.json and the probability rasters),
drops tiles that should not be proposed (already labelled according to the model's metadata or
an earlier batch, too little valid data, optionally no predicted building), ranks the rest with
a formula of :mod:`rscrisis.loop.ranking`, selects K (optionally diverse, always spaced on the
ground) and writes the batch described in :mod:`rscrisis.io.batch`.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rscrisis import __version__
from rscrisis.config import RankConfig
from rscrisis.errors import InputError
from rscrisis.io.batch import (
    EDIT_GEOJSON,
    EDIT_GPKG,
    EDIT_OSM,
    IMAGE,
    LABEL_STUDIO,
    LABEL_STUDIO_CONFIG,
    OVERVIEW,
    PRODUCTS,
    RANKING_CSV,
    RANKING_GPKG,
    README,
    STATUS,
    TASKS_GEOJSON,
    BatchLayout,
    Task,
    batch_tile_ids,
    geometry_fingerprint,
    task_name,
    write_status,
)
from rscrisis.io.names import child
from rscrisis.io.outputs import atomic_path, claim_output_dir, write_csv_atomic, write_json_atomic
from rscrisis.io.raster import open_raster, read_raster
from rscrisis.io.styles import YELLOW_TO_RED, add_style, graduated
from rscrisis.io.vector import read_osm, write_osm
from rscrisis.loop.ranking import REQUIRED, Spacing, priority, select
from rscrisis.progress import Progress, no_progress

if TYPE_CHECKING:  # geopandas stays off the import path until it is used
    import geopandas as gpd

log = logging.getLogger(__name__)


@dataclass
class RankResult:
    out: str
    formula: str
    diversity: str
    candidates: int
    excluded: dict[str, int]
    tasks: int
    mean_score: float
    seconds: float
    tile_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PredictionSet:
    root: Path
    scores: gpd.GeoDataFrame
    embeddings: np.ndarray
    manifest: dict

    @property
    def threshold(self) -> float:
        return float(self.manifest.get("threshold", 0.5))


def read_prediction_set(root: str | Path) -> PredictionSet:
    """Open a prediction set written by ``rscrisis predict`` on tile sets."""

    from rscrisis.predict.tiles import EMBEDDINGS, MANIFEST, SCORES, SCORES_LAYER

    root = Path(root)
    missing = [n for n in (SCORES, EMBEDDINGS, MANIFEST) if not (root / n).exists()]
    if missing:
        hint = "run rscrisis predict MODEL TILESETS --out DIR first"
        if (root / "probability.tif").exists():
            hint = "this is a scene map; rank needs predict on a tile set (tile the scene first)"
        raise InputError(f"is not a prediction set (no {missing[0]})", path=root, hint=hint)
    from rscrisis.io.inputs import PredictionManifest, check_numeric, read_json, read_layer
    from rscrisis.io.names import check_names

    again = "the prediction set is damaged or was edited; run predict again with --overwrite"
    manifest = read_json(root / MANIFEST, hint=again, schema=PredictionManifest)
    scores = read_layer(root / SCORES, SCORES_LAYER, required=SCORE_COLUMNS, hint=again)
    check_names(scores.tile_id, "tile id", root / SCORES)
    if scores.tile_id.duplicated().any():
        raise InputError("lists a tile twice", path=root / SCORES, hint=again)
    text_columns = {"tile_id", "scene", "tileset", "prob", scores.geometry.name}
    check_numeric(
        scores, [c for c in scores.columns if c not in text_columns], root / SCORES, again
    )
    try:
        embeddings = np.load(root / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise InputError(
            f"is not a readable embeddings array ({detail})", path=root / EMBEDDINGS, hint=again
        ) from None
    if embeddings.ndim != 2 or embeddings.dtype.kind != "f" or len(embeddings) != len(scores):
        raise InputError(
            f"has embeddings of shape {embeddings.shape} ({embeddings.dtype}) for "
            f"{len(scores)} tiles",
            path=root / EMBEDDINGS,
            hint=again,
        )
    return PredictionSet(root, scores, embeddings, manifest)


#: the scores.gpkg columns every formula and filter reads
SCORE_COLUMNS = ("tile_id", "tileset", "pred_iou", "valid_fraction", "building_fraction")


def labelled_tile_ids(model_path: str | Path | None) -> set[str]:
    """Tiles the model already learnt from, as recorded by finetune in its metadata."""
    if not model_path or not Path(model_path).exists():
        return set()
    from rscrisis.ml.model import read_meta

    return set(read_meta(model_path).training.get("labelled_tiles", []))


def _resolve_tileset(pred: PredictionSet, value: str) -> Path:
    path = Path(value)
    if not path.is_absolute() and not path.exists():
        path = pred.root.parent / value
    return path


def rank(
    pred_set: str | Path,
    out: str | Path,
    *,
    config: RankConfig | None = None,
    overwrite: bool = False,
    progress: Progress = no_progress,
) -> RankResult:
    """Rank the tiles of a prediction set and export the top ones as an annotation batch."""
    config = config or RankConfig()
    t0 = time.perf_counter()
    out = Path(out)
    pred = read_prediction_set(pred_set)
    scores = pred.scores
    need = [c for c in REQUIRED[config.formula] if c not in scores.columns]
    if need:
        hint = (
            "predict again with --mc-samples 8"
            if config.formula == "bald"
            else "predict again with this rscrisis version"
        )
        raise InputError(
            f"has no {need[0]!r} column, which formula {config.formula!r} needs",
            path=pred.root / "scores.gpkg",
            hint=hint,
        )
    excluded: dict[str, int] = {}
    keep = np.ones(len(scores), bool)

    def drop(reason: str, mask: np.ndarray) -> None:
        n = int((keep & mask).sum())
        if n:
            excluded[reason] = n
        keep[mask] = False

    tile_ids = scores.tile_id.to_numpy().astype(str)
    labelled = labelled_tile_ids(pred.manifest.get("model"))
    drop("labelled (model metadata)", np.isin(tile_ids, list(labelled)))
    earlier: set[str] = set()
    for b in config.exclude:
        earlier |= batch_tile_ids(Path(b))
    drop("in an earlier batch", np.isin(tile_ids, list(earlier)))
    drop("valid fraction below min_valid", scores.valid_fraction.to_numpy() < config.min_valid)
    if config.skip_empty:
        drop("no predicted building", scores.building_fraction.to_numpy() <= 0)
    candidates = np.flatnonzero(keep)
    if len(candidates) == 0:
        raise InputError(
            f"no tile is left to rank ({', '.join(f'{k}: {v}' for k, v in excluded.items())})",
            path=pred.root,
            hint="lower --min-valid, drop --skip-empty, or predict a larger area",
        )
    cand = scores.iloc[candidates].reset_index(drop=True)
    score, components = priority(config.formula, cand, seed=config.seed)
    unscored = ~np.isfinite(score)
    if unscored.any():
        log.warning(
            "%d of %d candidate tiles have no finite %s score (NaN statistics in scores.gpkg); "
            "they are ranked last",
            int(unscored.sum()),
            len(score),
            config.formula,
        )
        score = np.where(unscored, -np.inf, score)
    spacing = Spacing.from_frame(cand, config.spacing) if config.spatial else None
    chosen = select(
        score,
        cand.tile_id.to_numpy().astype(str),
        config.top,
        diversity=config.diversity,
        embeddings=np.asarray(pred.embeddings)[candidates],
        spacing=spacing,
        pool_factor=config.pool_factor,
        seed=config.seed,
    )
    if len(chosen) < config.top:
        log.warning(
            "only %d of %d tiles could be chosen (candidates: %d; spacing keeps chosen tiles "
            "apart)",
            len(chosen),
            config.top,
            len(cand),
        )
    with claim_output_dir(out, PRODUCTS, overwrite=overwrite):
        out.mkdir(parents=True, exist_ok=True)
        ranking = cand.iloc[chosen].copy()
        ranking.insert(0, "rank", np.arange(1, len(chosen) + 1))
        ranking.insert(2, "score", score[chosen])
        for name, values in components.items():
            ranking[name] = values[chosen]
        ranking["task"] = [
            task_name(r, t) for r, t in zip(ranking["rank"], ranking.tile_id, strict=True)
        ]
        ranking = ranking.reset_index(drop=True)
        tasks_meta = []
        for n, row in enumerate(ranking.itertuples(index=False)):
            tasks_meta.append(_export_task(pred, row, out, config))
            progress(n + 1, len(ranking))
        _write_tables(ranking, out)
        _write_overview(ranking, cand, out, config)
        write_status(
            out / STATUS,
            [Task(r.task, r.tile_id, int(r.rank), "todo") for r in ranking.itertuples(index=False)],
        )
        if config.label_studio:
            _write_label_studio(ranking, out, tasks_meta, config)
        (out / README).write_text(_readme(ranking, config, pred), encoding="utf-8")
        result = RankResult(
            out=str(out),
            formula=config.formula,
            diversity=config.diversity,
            candidates=len(cand),
            excluded=excluded,
            tasks=len(ranking),
            mean_score=round(float(np.mean(score[chosen])), 4) if chosen else 0.0,
            seconds=round(time.perf_counter() - t0, 2),
            tile_ids=list(ranking.tile_id),
        )
        write_json_atomic(
            BatchLayout(out).manifest,
            {
                "kind": "rscrisis.batch",
                "rscrisis_version": __version__,
                "prediction_set": str(pred.root.resolve()),
                "model": pred.manifest.get("model"),
                "threshold": pred.threshold,
                "crs": ranking.crs.to_string() if ranking.crs else None,
                "config": config.model_dump(mode="json"),
                "result": {k: v for k, v in result.to_dict().items() if k != "tile_ids"},
                "tasks": tasks_meta,
            },
        )
        return result


def _export_task(pred: PredictionSet, row, out: Path, config: RankConfig) -> dict:
    """Image chip + editable pre-annotation of one task; returns its manifest entry."""

    from rscrisis.geo.polygons import mask_buildings
    from rscrisis.io.raster import inspect_scene
    from rscrisis.io.tileset import TileSetLayout, footprint
    from rscrisis.predict.tiles import read_prob

    task_dir = BatchLayout(out).task_dir(row.task)
    task_dir.mkdir(parents=True, exist_ok=True)
    tileset = _resolve_tileset(pred, row.tileset)
    image = TileSetLayout(tileset).image_path(row.tile_id)
    if not image.exists():
        raise InputError(
            f"tile {row.tile_id} is missing",
            path=image,
            hint="the tile set moved or was deleted since predict; predict it again",
        )
    # a copy, not a hard link: annotators edit chips in place (gdal_edit, QGIS georeferencing),
    # and through a link that edit would change the tile set the model trains on
    shutil.copyfile(image, task_dir / IMAGE)
    info = inspect_scene(image)
    from rscrisis.predict.tiles import PROBS

    prob_path = child(pred.root / PROBS, row.tile_id, ".tif")  # never the table's own path
    if not prob_path.is_file():
        raise InputError(
            f"the probability raster of tile {row.tile_id} is missing",
            path=prob_path,
            hint="the prediction set is incomplete; run predict again with --overwrite",
        )
    prob, valid = read_prob(prob_path)
    with open_raster(prob_path) as ds:
        transform, crs = ds.transform, ds.crs
    frame = mask_buildings(
        (prob > pred.threshold) & valid,
        np.where(valid, prob, 0),
        transform,
        crs,
        info.gsd_m,
        min_area=config.min_area,
        simplify=config.simplify,
        regularize_outlines=config.regularize,
    )
    # squared or simplified outlines may poke past the tile edge: the task is the tile
    tile_area = footprint(transform, info.width, info.height)
    frame = frame[["building_id", "mean_prob", "geometry"]].assign(building="yes")
    frame["geometry"] = frame.geometry.intersection(tile_area)
    frame = frame[frame.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
    frame = frame.explode(index_parts=False).reset_index(drop=True)
    # typed POLYGON even when empty (QGIS offers polygon drawing on a typed layer only), and
    # the layer named "buildings", not after the temporary file
    with atomic_path(task_dir / EDIT_GPKG) as tmp:
        frame.to_file(
            tmp, layer="buildings", driver="GPKG", engine="pyogrio", geometry_type="Polygon"
        )
    # JOSM turns every GeoJSON property into an OSM tag: building=yes, and the model's own
    # fields namespaced so they are plainly not OSM tags
    wgs84 = frame.to_crs("EPSG:4326").rename(
        columns={"building_id": "rscrisis:building_id", "mean_prob": "rscrisis:mean_prob"}
    )
    with atomic_path(task_dir / EDIT_GEOJSON) as tmp:
        wgs84.to_file(
            tmp,
            layer="buildings",
            driver="GeoJSON",
            engine="pyogrio",
            geometry_type="Polygon",
            layer_options={"RFC7946": "YES", "COORDINATE_PRECISION": 7},
        )
    with atomic_path(task_dir / EDIT_OSM) as tmp:
        write_osm(tmp, wgs84.geometry.values)
    return {
        "task": row.task,
        "tile_id": row.tile_id,
        "rank": int(row.rank),
        "tileset": str(tileset.resolve()),
        "width": info.width,
        "height": info.height,
        "pre_annotation_buildings": len(frame),
        "fingerprints": {
            EDIT_GPKG: geometry_fingerprint(frame),
            EDIT_GEOJSON: geometry_fingerprint(_reread(task_dir / EDIT_GEOJSON)),
            EDIT_OSM: geometry_fingerprint(read_osm(task_dir / EDIT_OSM)),
        },
    }


def _reread(path: Path):
    import geopandas as gpd

    return gpd.read_file(path, engine="pyogrio")


def _write_overview(ranking, candidates, out: Path, config: RankConfig) -> None:
    """``overview.png``: the batch's chips with the model's outlines, and where they lie."""
    import geopandas as gpd

    from rscrisis.io.pictures import batch_overview

    layout = BatchLayout(out)
    chips = []
    for row in ranking.itertuples(index=False):
        task_dir = layout.task_dir(row.task)
        chips.append(
            {
                "rank": int(row.rank),
                "image": task_dir / IMAGE,
                "buildings": gpd.read_file(task_dir / EDIT_GPKG, engine="pyogrio"),
            }
        )
    title = (
        f"{out.name}: {len(ranking)} tasks by {config.formula} (diversity {config.diversity}); "
        "cyan outlines: the model's buildings to correct"
    )
    batch_overview(chips, candidates[["geometry"]], ranking[["rank", "geometry"]], out / OVERVIEW,
                   title)  # fmt: skip


def _write_tables(ranking, out: Path) -> None:
    cols = [c for c in ranking.columns if c != "geometry"]
    front = ["rank", "task", "tile_id", "score"]
    ordered = front + [c for c in cols if c not in front]
    ranking = ranking[[*ordered, "geometry"]]
    with atomic_path(out / RANKING_GPKG) as tmp:
        ranking.to_file(tmp, layer="ranking", driver="GPKG", engine="pyogrio")
        top = max(float(ranking["score"].max()), 1e-9) if len(ranking) else 1.0
        classes = [top * k / 5 for k in range(5)] + [top * 1.0001]
        add_style(tmp, "ranking", graduated("score", classes, YELLOW_TO_RED), "priority",
                  "tasks coloured by their priority score (red: first)")  # fmt: skip
    rows = ranking.drop(columns="geometry").to_dict(orient="records")
    write_csv_atomic(out / RANKING_CSV, rows)
    grid = ranking[["rank", "task", "tile_id", "score", "geometry"]].assign(status="todo")
    grid = grid.to_crs("EPSG:4326")
    with atomic_path(out / TASKS_GEOJSON) as tmp:
        grid.to_file(
            tmp, layer="tasks", driver="GeoJSON", engine="pyogrio", layer_options={"RFC7946": "YES"}
        )


def _write_label_studio(ranking, out: Path, tasks_meta: list[dict], config: RankConfig) -> None:
    """Label Studio import (:mod:`rscrisis.io.label_studio`): one task per tile with a PNG image,
    the model's polygons as a prediction scored by the rank score, and the labelling config."""
    import geopandas as gpd
    import shapely
    from PIL import Image

    from rscrisis.io.label_studio import LABEL_CONFIG, image_url, task_results

    scores = dict(zip(ranking.task, ranking.score, strict=True))
    items = []
    for meta in tasks_meta:
        task_dir = BatchLayout(out).task_dir(meta["task"])
        with read_raster(task_dir / IMAGE) as ds:
            data = ds.read(list(range(1, min(ds.count, 3) + 1)))
            inv = ~ds.transform
            w, h = ds.width, ds.height
        if data.dtype != np.uint8:
            lo, hi = np.percentile(data, (2, 98), axis=(1, 2), keepdims=True)
            data = np.clip((data - lo) / np.maximum(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
        img = data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
        Image.fromarray(img).save(task_dir / "image.png")
        frame = gpd.read_file(task_dir / EDIT_GPKG, engine="pyogrio")
        polygons = [
            shapely.transform(g, lambda xy, inv=inv: np.column_stack(inv @ (xy[:, 0], xy[:, 1])))
            for g in frame.geometry.values
        ]
        score = float(scores[meta["task"]])
        items.append(
            {
                "id": meta["rank"],
                "data": {
                    "image": image_url(config.label_studio_prefix, out, meta["task"]),
                    "task": meta["task"],
                    "tile_id": meta["tile_id"],
                    "rank": meta["rank"],
                },
                "predictions": [
                    {
                        "model_version": f"rscrisis {__version__}",
                        "score": round(score, 4) if np.isfinite(score) else None,
                        "result": task_results(
                            meta["task"], polygons, frame["mean_prob"].tolist(), w, h
                        ),
                    }
                ],
            }
        )
    write_json_atomic(out / LABEL_STUDIO, items)
    with atomic_path(out / LABEL_STUDIO_CONFIG) as tmp:
        tmp.write_text(LABEL_CONFIG, encoding="utf-8")


def _readme(ranking, config: RankConfig, pred: PredictionSet) -> str:
    lines = [
        "# Annotation batch",
        "",
        f"{len(ranking)} tiles chosen by rscrisis {__version__} with formula "
        f"`{config.formula}` (diversity `{config.diversity}`) from `{pred.root}`.",
        "Every task is one image tile with the model's building outlines drawn on it. Your job "
        "is to make the outlines right.",
        "",
        "## For each task (folder `tasks/<task>/`)",
        "",
        "1. Open `image.tif` and **one** of the pre-annotation files:",
        "   - QGIS: `buildings.gpkg` (tile CRS). Toggle editing, fix, save.",
        "   - JOSM: `buildings.osm` (File > Open; its layer is marked never to upload, so model",
        "     output cannot reach OpenStreetMap by mistake), or `buildings.geojson`. Show",
        "     `image.tif` with the ImportImage plugin (File > Import image). Tag every new",
        "     building `building=yes`: JOSM saves an untagged shape as a line, which is refused.",
        "     Save back to the same file (File > Save, .osm or .geojson).",
        "2. Make every building in the image a polygon, and only buildings:",
        "   - delete polygons that are not buildings; draw missing buildings;",
        "   - move or reshape outlines to the roof edges (squared corners where the roof is);",
        "   - buildings cut by the tile edge: draw the part inside the tile (or the whole",
        "     building; anything outside the tile is ignored);",
        "   - a tile with no building at all: delete every polygon and save the empty file.",
        "   Edit one of the files only. If two change, rscrisis refuses the task.",
        "3. In `status.csv`, set the task's `status` to `done` (or `skipped` if the image cannot",
        "   be annotated: clouds, blur, unsure), and optionally your name and a note.",
        "   Tasks left `todo` are not used.",
        "",
        *(
            [
                "Label Studio: serve the folder holding this batch as the local-files document",
                "root, paste `labelstudio.xml` as the labelling interface and import",
                "`labelstudio.json`. Draw courtyards (holes) as `courtyard` polygons. Mark the",
                "tasks done in `status.csv`, export the project as JSON and pass the export to",
                "`rscrisis finetune ... --labels EXPORT.json`.",
                "",
            ]
            if config.label_studio
            else []
        ),
        "`tasks.geojson` is the task grid (for the Tasking Manager or a QGIS task layer);",
        "`ranking.csv` says why each tile was chosen (score and its components).",
        "",
        "## Then",
        "",
        "    rscrisis finetune MODEL.safetensors THIS_FOLDER --out NEW_MODEL.safetensors",
        "",
        "reads the corrected outlines of the `done` tasks, checks them (CRS, valid polygons,",
        "inside the tile), and refuses the batch with a clear message if one is malformed; the",
        "corrected tiles are written to `labels/` as a tile set.",
        "",
        "## Tasks",
        "",
        "| rank | task | score |",
        "| ---: | --- | ---: |",
    ]
    lines += [f"| {r.rank} | {r.task} | {r.score:.4f} |" for r in ranking.itertuples(index=False)]
    return "\n".join(lines) + "\n"
