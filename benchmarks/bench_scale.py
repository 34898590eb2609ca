"""Benchmark many-scene ``rscrisis predict``: in this process, and on a Dask LocalCluster of 1
and 2 worker processes (issue 17).

Run on demand (not a test):

    .venv/bin/python benchmarks/bench_scale.py                       # 8 scenes of 1024 px
    .venv/bin/python benchmarks/bench_scale.py --size 2048 --model models/a.safetensors

Scenes: SIZE x SIZE windows cut from one generated scene (bench_tile's generator, 0.3 m UTM),
each overlapping its neighbours by a quarter, so the overlap handling runs too. The model is
an untrained resnet18 U-Net (speed does not depend on weights) unless --model is given.

Reported per run: wall time (the cluster's start-up apart), throughput in Mpx/s, the scaling
efficiency against 1 worker, Dask's overhead per task (a worker's wall time over the scene
time its tasks report, per task), and the peak RSS of each worker process. Prints a table and
saves it as CSV and JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_scenes(folder: Path, count: int, size: int) -> list[str]:
    """``count`` scenes of ``size`` px in a row-major grid, a quarter of each shared with its
    neighbours, cut from one generated scene."""
    import rasterio
    from bench_tile import make_scene
    from rasterio.windows import Window

    step = size * 3 // 4
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    big, _ = make_scene(folder / "big.tif", max(cols, rows) * step + size)
    paths = []
    with rasterio.open(big) as ds:
        for k in range(count):
            window = Window((k % cols) * step, (k // cols) * step, size, size)
            profile = {**ds.profile, "width": size, "height": size,
                       "transform": ds.window_transform(window)}  # fmt: skip
            path = folder / f"scene{k:02d}.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(ds.read(window=window))
            paths.append(str(path))
    return paths


def run(model: Path, scenes: list[str], out: Path, workers: int | None, threads: int) -> dict:
    from rscrisis.config import SceneConfig
    from rscrisis.predict.many import predict_scenes

    config = SceneConfig(threads=threads)
    if workers is None:
        t0 = time.perf_counter()
        result = predict_scenes(model, scenes, out, config=config, overwrite=True)
        wall = time.perf_counter() - t0
        return {"run": "in-process", "workers": 1, "startup_s": 0.0, "wall_s": wall,
                "result": result, "worker_rss_mb": [_peak_rss_mb()]}  # fmt: skip
    from distributed import Client

    from rscrisis.cluster import local_cluster

    t0 = time.perf_counter()
    with local_cluster(workers) as cluster, Client(cluster) as client:
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        result = predict_scenes(
            model, scenes, out, config=config, scheduler=cluster.scheduler_address, overwrite=True
        )
        wall = time.perf_counter() - t1
        rss = client.run(_peak_rss_mb)
    return {"run": f"local:{workers}", "workers": workers, "startup_s": startup, "wall_s": wall,
            "result": result, "worker_rss_mb": sorted(rss.values())}  # fmt: skip


def main() -> None:
    # as the CLI does for scene prediction, and as local workers get (rscrisis.cluster)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--model", type=Path, default=None, help="model file (default: untrained)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scenes = make_scenes(folder, args.scenes, args.size)
        model = args.model
        if model is None:
            from bench_predict import make_model

            model = make_model(folder / "untrained.safetensors", Path(scenes[0]), "resnet18", 256)
        rows = []
        for workers in (None, 1, 2):
            threads = cores if workers is None else max(1, cores // workers)
            measured = run(model, scenes, folder / f"out-{workers}", workers, threads)
            result = measured.pop("result")
            task_s = sum(r["seconds"] for r in result.records if r["status"] == "done")
            mpx = args.scenes * args.size * args.size / 1e6
            per_worker_wall = measured["wall_s"] * measured["workers"]
            rows.append({
                **{k: v for k, v in measured.items() if k != "worker_rss_mb"},
                "scenes_done": result.done,
                "mpx_per_s": round(mpx / measured["wall_s"], 3),
                "overhead_per_task_s": round((per_worker_wall - task_s) / args.scenes, 3),
                "peak_rss_per_worker_mb": "/".join(f"{v:.0f}" for v in measured["worker_rss_mb"]),
                "torch_threads": threads,
                "buildings": result.buildings,
            })  # fmt: skip
        base = next(r for r in rows if r["run"] == "local:1")
        for r in rows:
            r["scaling_efficiency"] = round(base["wall_s"] / (r["wall_s"] * r["workers"]), 3)
            r["wall_s"] = round(r["wall_s"], 2)
            r["startup_s"] = round(r["startup_s"], 2)
    header = list(rows[0])
    print(f"{args.scenes} scenes of {args.size} px, {cores} cores")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(str(r[k]) for k in header))
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    with open(results / "bench_scale.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    summary = {"scenes": args.scenes, "size": args.size, "cores": cores, "rows": rows}
    (results / "bench_scale.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
