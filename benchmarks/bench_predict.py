"""Benchmark whole-scene ``rscrisis predict`` against the bare model and a TorchGeo baseline.

Run on demand (not a test); the TorchGeo baseline needs ``pip install -e ".[bench]"``:

    .venv/bin/python benchmarks/bench_predict.py --size 8192
    .venv/bin/python benchmarks/bench_predict.py --size 20000 --only rscrisis   # memory check

Scenes: a generated SIZE x SIZE RGB scene (bench_tile's generator, 0.3 m UTM) and, when
../shared/data/banepa is there, the Banepa predict scene (2048 x 2048, EPSG:4326). Every
measurement runs in a fresh process whose peak RSS is reported:

* ``forward``: the bare model forward pass on the scene's first windows (in memory before
  timing), same window, overlap and batch: the ceiling for end-to-end throughput (scene pixels
  / median batch time x batches). For PyTorch also the same model with its batch norms folded
  (``folded_*``), what ``rscrisis predict`` runs, timed batch for batch alternating with the
  plain model; the pipeline's rows give their share of both (``of_bare_forward``: the plain
  model, the reference of issue 18; ``of_folded_forward``: the pipeline's own overhead);
* ``rscrisis``: :func:`rscrisis.predict.scene.predict_scene` end to end (read, normalise, infer,
  blend, write COGs, polygons), in the precision / memory-format variants asked for;
* ``torchgeo``: the straightforward baseline: ``RasterDataset`` + ``GridGeoSampler`` +
  ``DataLoader`` with the same model, windows blended into full-scene arrays in memory (what
  TorchGeo inference code usually does), written as a GeoTIFF at the end.

The model is an untrained resnet18 U-Net (speed does not depend on weights) unless --model is
given; with --model, ``--dense`` adds the same generated scene through the seeded untrained
model (a speckled map). Variants combine ``fp32``/``bf16``, ``channels-last``, ``ort`` (ONNX
Runtime instead of eager PyTorch, fp32: ``fp32+ort``; without it the variant runs PyTorch
whatever ``--engine auto`` would pick) and ``overlapN`` (``bf16+channels-last+overlap32``).
``--repeat N`` runs every measurement N times, interleaved, and reports the median run with the
range; the ratio to the bare forward pairs the runs of one repetition. Where the generated
scene's footprints are beside it, each map's pixel IoU against them is reported
(``truth_iou``). Prints a table and saves it as CSV and JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BANEPA = HERE.parent.parent / "shared" / "data" / "banepa"
sys.path.insert(0, str(HERE))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_model(path: Path, scene: Path, encoder: str, tile: int) -> Path:
    """An untrained model whose metadata fits ``scene`` (no resampling, its own statistics)."""
    import torch

    from rscrisis.io.raster import inspect_scene
    from rscrisis.ml.model import ModelMeta, build_model, save_model

    info = inspect_scene(scene)
    torch.manual_seed(0)  # the untrained model's speckle, and so the building count, is fixed
    meta = ModelMeta(
        encoder=encoder,
        in_channels=info.band_count,
        mean=[110.0] * info.band_count,
        std=[40.0] * info.band_count,
        tile_size=tile,
        bands=list(info.bands),
        dtype=info.dtype,
        gsd_m=float(np.mean(info.gsd_m)),
    )
    save_model(build_model(meta), meta, path)
    return path


# ---- child processes: one measurement each ---------------------------------------------------


def child_forward(args) -> dict:
    """The model alone on the scene's own first windows, read into memory before timing.

    Real windows, not random tensors: the same input distribution and the same batch shapes as
    the pipeline. The throughput is the median over batches, so one slow batch (a page fault,
    another process) does not move the ceiling.
    """
    import torch

    from rscrisis.config import SceneConfig
    from rscrisis.ml.device import autocast_dtype
    from rscrisis.ml.model import load_model
    from rscrisis.predict.scene import StageClock, _read_batches, prepare_scene

    cfg = SceneConfig(window=args.window, overlap=args.overlap, batch_size=args.batch_size)
    prep = prepare_scene(args.model, args.scene, cfg)
    model, meta = load_model(args.model, "cpu")
    model.eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp = autocast_dtype(torch.device("cpu"), args.precision)
    run = model
    if args.engine == "onnxruntime":
        from rscrisis.ml.engine import onnx_runner

        run, amp = onnx_runner(model), None
    mean = np.asarray(meta.mean, np.float32)[:, None, None]
    std = np.asarray(meta.std, np.float32)[:, None, None]
    n_batches = max(3, min(args.forward_batches, -(-len(prep.plan) // args.batch_size)))
    batches = []
    for batch in _read_batches(prep, args.batch_size, mean, std, StageClock()):
        if batch.keep.sum() == args.batch_size:
            x = torch.from_numpy(batch.x)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            batches.append((x, torch.from_numpy(batch.valid).unsqueeze(1)))
        if len(batches) == n_batches + 1:
            break
    # PyTorch's engine runs the model with its batch norms folded (rscrisis.ml.engine): timed
    # too, batch for batch alternating with the plain model, so both see the same conditions
    runs = {"plain": run}
    if args.engine == "torch":
        from rscrisis.ml.engine import folded_model

        runs["folded"] = folded_model(model, args.channels_last)
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        for f in runs.values():
            f(*batches[0])  # warm-up: kernel creation
        for x, valid in batches[1:]:
            for name, f in runs.items():
                t0 = time.perf_counter()
                f(x, valid)
                times[name].append(time.perf_counter() - t0)
    mpx = prep.grid.width * prep.grid.height / 1e6
    result: dict = {"batches_timed": len(times["plain"])}
    for name in runs:
        windows_per_s = args.batch_size / float(np.median(times[name]))
        scene_seconds = len(prep.plan) / windows_per_s
        pre = "" if name == "plain" else f"{name}_"
        result[f"{pre}seconds"] = round(scene_seconds, 2)
        result[f"{pre}mpx_per_s"] = round(mpx / scene_seconds, 3)
        result[f"{pre}windows_per_s"] = round(windows_per_s, 2)
    return result


def child_rscrisis(args) -> dict:
    # imported before the clock starts, as in the TorchGeo child: a benchmark of the pipeline,
    # not of Python's import system (the CLI pays it once either way)
    import geopandas  # noqa: F401
    import segmentation_models_pytorch  # noqa: F401
    import torch  # noqa: F401

    from rscrisis.config import SceneConfig
    from rscrisis.predict.scene import predict_scene

    cfg = SceneConfig(
        window=args.window,
        overlap=args.overlap,
        batch_size=args.batch_size,
        precision=args.precision,
        channels_last=args.channels_last,
        engine=args.engine,
    )
    t0 = time.perf_counter()
    res = predict_scene(args.model, args.scene, args.out, config=cfg, overwrite=True)
    dt = time.perf_counter() - t0
    timings = json.loads((Path(args.out) / "predict.json").read_text())["timings"]
    stages = {k.removesuffix("_cpu_s"): v for k, v in timings.items() if k.endswith("_cpu_s")}
    helper = sum(stages.values())
    mpx = res.width * res.height / 1e6
    return {
        "seconds": round(dt, 2),
        "mpx_per_s": round(mpx / dt, 3),
        "windows_per_s": round(res.windows / dt, 2),
        "buildings": res.buildings,
        "model_share": round(timings["model_s"] / dt, 3),
        "after_last_batch_s": timings["after_last_batch_s"],
        # choosing the engine: for ONNX Runtime the export, or reading the cached graph
        "engine_s": timings.get("engine_s"),
        # helper CPU seconds per stage (reader, writer and polygon threads), per Mpx and per
        # 1,000 buildings: what competes with the model for the cores
        **{f"{k}_cpu_s": v for k, v in stages.items()},
        "helper_cpu_s_per_mpx": round(helper / mpx, 3),
        "helper_cpu_s_per_1000_buildings": round(1000 * helper / max(res.buildings, 1), 3),
    }


def child_torchgeo(args) -> dict:
    import rasterio
    import torch
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler

    from rscrisis.ml.model import load_model

    scene = Path(args.scene)

    class Scene(RasterDataset):
        filename_glob = scene.name
        is_image = True

    from rscrisis.config import SceneConfig
    from rscrisis.predict.scene import prepare_scene

    model, meta = load_model(args.model, "cpu")
    model.eval()
    mean = torch.tensor(meta.mean).view(1, -1, 1, 1)
    std = torch.tensor(meta.std).view(1, -1, 1, 1)
    # the same grid as rscrisis (the model's resolution), so both process the same pixels
    grid = prepare_scene(args.model, scene, SceneConfig(window=args.window)).grid
    res = (grid.transform.a, -grid.transform.e)
    t0 = time.perf_counter()
    ds = Scene(paths=str(scene.parent), res=res)
    sampler = GridGeoSampler(ds, size=args.window, stride=args.window - args.overlap)
    loader = DataLoader(ds, sampler=sampler, batch_size=args.batch_size, collate_fn=stack_samples)
    width, height = grid.width, grid.height
    inv = ~grid.transform
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "transform": grid.transform,
        "crs": grid.crs,
    }
    total = np.zeros((height, width), np.float32)
    count = np.zeros((height, width), np.float32)
    n = 0
    with torch.no_grad():
        for batch in loader:
            x = (batch["image"][:, : meta.in_channels].float() - mean) / std
            prob = torch.sigmoid(model(x)[0]).squeeze(1).numpy()
            for p, bounds in zip(prob, batch["bounds"], strict=True):
                minx, maxy = _bounds_origin(bounds)
                c, r = (round(v) for v in inv @ (minx, maxy))
                # clip the window to the grid (sampler windows may hang over its edges)
                r0, c0 = max(r, 0), max(c, 0)
                r1, c1 = min(r + p.shape[0], height), min(c + p.shape[1], width)
                if r1 <= r0 or c1 <= c0:
                    continue
                total[r0:r1, c0:c1] += p[r0 - r : r1 - r, c0 - c : c1 - c]
                count[r0:r1, c0:c1] += 1
            n += len(prob)
    out = np.where(count > 0, total / np.maximum(count, 1), 0)
    profile.update(count=1, dtype="uint8", nodata=255, compress="deflate", tiled=True)
    (Path(args.out) / "torchgeo.tif").unlink(missing_ok=True)
    with rasterio.open(Path(args.out) / "torchgeo.tif", "w", **profile) as dst:
        dst.write(np.round(out * 254).astype(np.uint8), 1)
    dt = time.perf_counter() - t0
    return {
        "seconds": round(dt, 2),
        "mpx_per_s": round(width * height / 1e6 / dt, 3),
        "windows_per_s": round(n / dt, 2),
        "coverage": round(float((count > 0).mean()), 4),  # share of the grid it predicted
    }


def _bounds_origin(bounds) -> tuple[float, float]:
    """(minx, maxy) of a TorchGeo sample's bounds, across TorchGeo versions."""
    if hasattr(bounds, "minx"):
        return bounds.minx, bounds.maxy
    if isinstance(bounds, tuple) and len(bounds) and isinstance(bounds[0], slice):
        return bounds[0].start, bounds[1].stop  # 0.8: (x slice, y slice, t slice)
    arr = np.asarray(bounds, dtype=float).ravel()
    return float(arr[0]), float(arr[3])


def _agreement(out: Path, reference: Path) -> dict:
    """How far a variant's map is from the first variant's: mask IoU and mean |delta p|."""
    import rasterio

    if out == reference or not (reference / "mask.tif").exists():
        return {}
    inter = union = 0
    diff = n = 0.0
    with (
        rasterio.open(out / "mask.tif") as a,
        rasterio.open(reference / "mask.tif") as b,
        rasterio.open(out / "probability.tif") as pa,
        rasterio.open(reference / "probability.tif") as pb,
    ):
        for _, win in a.block_windows(1):
            ma, mb = a.read(1, window=win) == 1, b.read(1, window=win) == 1
            inter += int((ma & mb).sum())
            union += int((ma | mb).sum())
            va, vb = pa.read(1, window=win), pb.read(1, window=win)
            ok = (va != 255) & (vb != 255)
            diff += float(np.abs(va[ok].astype(float) - vb[ok]).sum()) / 254
            n += ok.sum()
    return {
        "mask_iou_vs_ref": round(inter / union, 4) if union else 1.0,
        "mean_abs_dp_vs_ref": round(diff / max(n, 1), 5),
    }


def _truth_iou(out: Path, footprints: Path) -> dict:
    """Pixel IoU of the map's mask against the generated scene's true footprints (the
    ``.gpkg`` bench_tile writes beside it), rasterised on the mask's grid."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize

    if not footprints.exists() or not (out / "mask.tif").exists():
        return {}
    with rasterio.open(out / "mask.tif") as ds:
        mask = ds.read(1)
        truth = gpd.read_file(footprints).to_crs(ds.crs)
        true = rasterize(truth.geometry, out_shape=mask.shape, transform=ds.transform) == 1
    ok = mask != 255
    pred = (mask == 1) & ok
    union = (pred | (true & ok)).sum()
    return {"truth_iou": round(float((pred & true).sum() / union), 4) if union else 1.0}


def _median_run(results: list[dict]) -> dict:
    """The run with the median time (the lower one of an even count), with the range."""
    ok = sorted((r for r in results if "seconds" in r), key=lambda r: r["seconds"])
    if not ok:
        return results[-1]
    row = dict(ok[(len(ok) - 1) // 2])
    if len(ok) > 1:
        row["seconds_range"] = f"{ok[0]['seconds']}-{ok[-1]['seconds']}"
    return row


def child_graph(args) -> dict:
    """Put the model's ONNX graph in the children's cache (what a second run finds there)."""
    from rscrisis.ml.engine import onnx_runner
    from rscrisis.ml.model import load_model

    model, _ = load_model(args.model, "cpu")
    t0 = time.perf_counter()
    onnx_runner(model, cache=True)
    return {"seconds": round(time.perf_counter() - t0, 2)}


def child_streams(args) -> dict:
    """ONNX Runtime's batch in parts at once (rscrisis.ml.engine.MAX_STREAMS; two parts of one
    thread each on 2 cores) against one run on all threads, in one process, in ABBA order: the
    same file cache and the same hour for both, which separate runs on this machine lack (they
    drift by 10 %). Every run reads the graph from the cache, put there beforehand."""
    import geopandas  # noqa: F401
    import segmentation_models_pytorch  # noqa: F401

    import rscrisis.ml.engine as engines
    from rscrisis.config import SceneConfig
    from rscrisis.predict.scene import predict_scene

    cfg = SceneConfig(window=args.window, overlap=args.overlap, batch_size=args.batch_size,
                      precision="fp32", engine="onnxruntime")  # fmt: skip
    default = engines.MAX_STREAMS
    # untimed: a process's first scene also pays first-time imports and GDAL's driver set-up
    predict_scene(args.model, args.scene, args.out, config=cfg, overwrite=True)
    runs: dict[str, list[float]] = {"parts": [], "whole": []}
    for i in range(args.streams_ab):
        for name in ("parts", "whole") if i % 2 == 0 else ("whole", "parts"):
            engines.MAX_STREAMS = default if name == "parts" else 1
            engines._RUNNERS.clear()
            t0 = time.perf_counter()
            predict_scene(args.model, args.scene, args.out, config=cfg, overwrite=True)
            runs[name].append(round(time.perf_counter() - t0, 2))
    gains = [w - p for p, w in zip(runs["parts"], runs["whole"], strict=True)]
    return {
        "parts_s": runs["parts"],
        "whole_s": runs["whole"],
        "median_gain_s": round(float(np.median(gains)), 2),
        "pairs_faster_in_parts": sum(g > 0 for g in gains),
        "pairs": len(gains),
    }


CHILDREN = {
    "forward": child_forward,
    "rscrisis": child_rscrisis,
    "torchgeo": child_torchgeo,
    "graph": child_graph,
    "streams": child_streams,
}


def run_child(kind: str, env: dict | None = None, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", kind]
    for k, v in kw.items():
        if isinstance(v, bool):
            if v:
                cmd.append(f"--{k.replace('_', '-')}")
        else:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192, help="generated scene side (px)")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64, help="overridden by +overlapN")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: untrained)")
    parser.add_argument(
        "--variants",
        default="fp32,channels-last,bf16+channels-last",
        help="rscrisis precision / memory-format variants to run",
    )
    parser.add_argument(
        "--only",
        choices=["all", "rscrisis", "no-torchgeo"],
        default="all",
        help="rscrisis: skip the bare forward and TorchGeo; no-torchgeo: skip TorchGeo",
    )
    parser.add_argument("--no-banepa", action="store_true")
    parser.add_argument(
        "--dense",
        action="store_true",
        help="also the dense case: the generated scene through the seeded untrained model, "
        "whose speckle makes thousands of small buildings (deterministic for a torch build)",
    )
    parser.add_argument("--forward-batches", type=int, default=30)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each measurement, interleaved; the table gives the median and the range",
    )
    parser.add_argument(
        "--graph-cache",
        choices=["warm", "cold"],
        default="warm",
        help="ONNX Runtime runs: warm, the model's graph is already in the cache (put there "
        "before the timed runs), as for every run after a model's first; cold, every run "
        "starts from an empty cache and exports the graph. The cache is the workdir's, never "
        "the user's",
    )
    parser.add_argument(
        "--streams-ab",
        type=int,
        default=0,
        metavar="PAIRS",
        help="instead of the table: ONNX Runtime's batch in parts against whole, PAIRS runs "
        "of each alternating in one process, per scene",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    # child-process arguments
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--scene", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="torch", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = CHILDREN[args.child](args)
        result["peak_rss_mb"] = round(_peak_rss_mb())
        print(json.dumps(result))
        return

    from bench_tile import make_scene

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_predict_"))
    work.mkdir(parents=True, exist_ok=True)
    scenes = []
    big = work / f"generated_{args.size}.tif"
    if not big.exists():
        t0 = time.perf_counter()
        make_scene(big, args.size)
        print(f"generated {big.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    scenes.append((f"generated {args.size}x{args.size}", big))
    banepa = BANEPA / "predict" / "scene.tif"
    if banepa.exists() and not args.no_banepa:
        scenes.append(("Banepa predict 2048x2048", banepa))
    variants = [v for v in args.variants.split(",") if v]
    rows = []
    common = {
        "window": args.window,
        "overlap": args.overlap,
        "batch_size": args.batch_size,
    }
    cases = [(label, scene, args.model) for label, scene in scenes]
    if args.dense and args.model is not None:  # with an untrained model every case is dense
        cases.append((f"dense {args.size}x{args.size}", big, None))
    for label, scene, given in cases:
        model = given or make_model(
            work / f"model-{scene.stem}.safetensors", scene, args.encoder, args.window
        )
        # the children's graph cache: the workdir's, emptied per model, and filled before the
        # timed runs unless they are to export (--graph-cache cold)
        cache = work / "graph-cache"
        env = {"RSCRISIS_CACHE_DIR": str(cache)}
        shutil.rmtree(cache, ignore_errors=True)
        if args.streams_ab or args.graph_cache == "warm":
            run_child("graph", env=env, model=model)
        if args.streams_ab:
            out = work / f"out-{label.split()[0]}-{scene.stem}-streams"
            out.mkdir(exist_ok=True)
            res = run_child("streams", env=env, scene=scene, out=out, model=model,
                            streams_ab=args.streams_ab, **common)  # fmt: skip
            rows.append({"scene": label, **res})
            print(json.dumps(rows[-1]), file=sys.stderr)
            continue
        runs: list[tuple[str, str, dict]] = []
        for v in variants:
            opts = {
                "precision": "bf16" if "bf16" in v else "fp32",
                "channels_last": "channels-last" in v,
                "engine": "torch",
            }
            for part in v.split("+"):  # e.g. bf16+channels-last+overlap32: a smaller overlap
                if part.startswith("overlap"):
                    opts["overlap"] = int(part.removeprefix("overlap"))
                if part == "ort":  # fp32+ort: ONNX Runtime (rscrisis.ml.engine)
                    opts["engine"] = "onnxruntime"
            if args.only != "rscrisis":
                runs.append((f"bare forward {v}", "forward", opts))
            runs.append((f"rscrisis {v}", "rscrisis", opts))
        if args.only == "all":
            runs.append(("torchgeo GridGeoSampler", "torchgeo", {"precision": "fp32"}))
        reps: dict[str, list[dict]] = {name: [] for name, _, _ in runs}
        for rep in range(args.repeat):  # interleaved, so drift hits every run alike
            for name, kind, extra in runs:
                out = work / f"out-{label.split()[0]}-{scene.stem}-{name.replace(' ', '_')}"
                out.mkdir(exist_ok=True)
                if args.graph_cache == "cold":
                    shutil.rmtree(cache, ignore_errors=True)
                res = run_child(kind, env=env, scene=scene, out=out, model=model,
                                **{**common, **extra})  # fmt: skip
                if kind == "rscrisis":
                    res["graph_cache"] = args.graph_cache
                if kind == "rscrisis" and "error" not in res:
                    ref = work / f"out-{label.split()[0]}-{scene.stem}-rscrisis_{variants[0]}"
                    res.update(_agreement(out, ref))
                    res.update(_truth_iou(out, scene.with_suffix(".gpkg")))
                reps[name].append(res)
                print(json.dumps({"scene": label, "run": name, "repeat": rep, **res}),
                      file=sys.stderr)  # fmt: skip
        for name, _, _ in runs:
            rows.append({"scene": label, "run": name, **_median_run(reps[name]),
                         "cpu_threads": os.cpu_count()})  # fmt: skip
        fwd = {
            r["run"].removeprefix("bare forward "): r
            for r in rows
            if r["scene"] == label and r["run"].startswith("bare forward")
        }
        for r in rows:
            if r["scene"] == label and r["run"].startswith("rscrisis") and "mpx_per_s" in r:
                key = r["run"].split(maxsplit=1)[-1]  # same precision, memory format, overlap
                ref = fwd.get(key)
                if ref and "mpx_per_s" in ref:
                    # of the plain model's forward (the reference) and, for PyTorch,
                    # of the folded model's, which is what the pipeline runs
                    for col, fwd_key in (("bare", "mpx_per_s"), ("folded", "folded_mpx_per_s")):
                        if fwd_key not in ref:
                            continue
                        r[f"of_{col}_forward"] = round(r["mpx_per_s"] / ref[fwd_key], 3)
                        pairs = zip(reps[r["run"]], reps[f"bare forward {key}"], strict=True)
                        ratios = [a["mpx_per_s"] / b[fwd_key] for a, b in pairs
                                  if "mpx_per_s" in a and fwd_key in b]  # fmt: skip
                        if len(ratios) > 1:
                            r[f"of_{col}_range"] = f"{min(ratios):.3f}-{max(ratios):.3f}"
    keys = [
        "scene",
        "run",
        "seconds",
        "mpx_per_s",
        "windows_per_s",
        "folded_seconds",
        "folded_windows_per_s",
        "of_bare_forward",
        "of_bare_range",
        "of_folded_forward",
        "of_folded_range",
        "seconds_range",
        "model_share",
        "peak_rss_mb",
        "buildings",
        "read_cpu_s",
        "normalise_cpu_s",
        "blend_cpu_s",
        "write_cpu_s",
        "polygons_cpu_s",
        "quicklook_cpu_s",
        "after_last_batch_s",
        "engine_s",
        "graph_cache",
        "helper_cpu_s_per_mpx",
        "helper_cpu_s_per_1000_buildings",
        "mask_iou_vs_ref",
        "mean_abs_dp_vs_ref",
        "truth_iou",
        "coverage",
        "error",
    ]
    if args.streams_ab:
        keys = ["scene", "parts_s", "whole_s", "median_gain_s", "pairs_faster_in_parts", "pairs"]
    keys = [k for k in keys if any(k in r for r in rows)]
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(str(r.get(k, "")) for k in keys))
    args.results.mkdir(parents=True, exist_ok=True)
    name = f"bench_predict_{args.size}" + ("_streams" if args.streams_ab else "")
    with open(args.results / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (args.results / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
