"""Benchmark ``rscrisis tile`` on a large generated scene, against GDAL's gdal_retile.py.

Run on demand (not a test):

    .venv/bin/python benchmarks/bench_tile.py --size 20000

It writes a SIZE x SIZE RGB uint8 GeoTIFF (tiled, deflate) by repeating the synthetic sample
scene with per-block variation, then times, each in a fresh process whose peak RSS is measured:

* ``rscrisis tile`` (imagery only), and with ``--labels`` (building masks too);
* ``gdal_retile.py`` with the same tile size and compression, when it is installed
  (Debian: ``apt-get install gdal-bin python3-gdal``).

Prints a table and saves it as CSV and JSON under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Runs a command and prints its wall time and the peak RSS of the whole process tree it made.
MEASURE = """
import resource, subprocess, sys, time, json
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
dt = time.perf_counter() - t0
rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": rc, "seconds": dt, "peak_rss_mb": rss_kb / 1024}))
"""


def make_scene(path: Path, size: int, seed: int = 0) -> tuple[Path, Path]:
    """A big scene made of the sample scene's 1536 px area A, tiled with variations.

    Returns the raster and a GeoPackage of the matching building footprints.
    """
    import geopandas as gpd
    import rasterio
    from affine import Affine
    from shapely import affinity

    from rscrisis.synth.scenes import AREA_A, render_scene

    block = 1536
    image, _, src_t, buildings = render_scene(AREA_A, block, 0.3, seed)
    rng = np.random.default_rng(seed)
    x0, y0 = 400_000.0, 3_100_000.0
    transform = Affine(0.3, 0, x0, 0, -0.3, y0)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32645",
        "transform": transform,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "predictor": 2,
        "photometric": "rgb",
        "BIGTIFF": "YES",
    }
    footprints = []
    n = -(-size // block)
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(n):
            h = min(block, size - r * block)
            strip = np.empty((3, h, size), np.uint8)
            for c in range(n):
                w = min(block, size - c * block)
                gain = rng.uniform(0.85, 1.15, (3, 1, 1))
                strip[:, :, c * block : c * block + w] = np.clip(
                    image[:, :h, :w] * gain, 0, 255
                ).astype(np.uint8)
                dx = x0 + c * block * 0.3 - src_t.c
                dy = y0 - r * block * 0.3 - src_t.f
                footprints.extend(affinity.translate(b, dx, dy) for b in buildings)
            dst.write(strip, window=rasterio.windows.Window(0, r * block, size, h))
    labels = path.with_suffix(".gpkg")
    gpd.GeoDataFrame(geometry=footprints, crs="EPSG:32645").to_file(labels, engine="pyogrio")
    return path, labels


def measure(cmd: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20000, help="scene side in pixels")
    parser.add_argument("--tile", type=int, default=256, help="tile side in pixels")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="scratch folder (default: a temporary folder, removed at the end)",
    )
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_tile_"))
    work.mkdir(parents=True, exist_ok=True)
    scene = work / "big.tif"
    t0 = time.perf_counter()
    scene, labels = make_scene(scene, args.size)
    print(
        f"scene {args.size} x {args.size} px written in {time.perf_counter() - t0:.0f} s "
        f"({scene.stat().st_size / 2**20:.0f} MiB)",
        file=sys.stderr,
    )
    mpx = args.size * args.size / 1e6
    rscrisis = [str(Path(sys.executable).with_name("rscrisis"))]
    if not Path(rscrisis[0]).exists():
        rscrisis = [sys.executable, "-m", "rscrisis"]
    rows = []
    runs = [
        (
            "rscrisis tile (imagery)",
            [
                *rscrisis,
                "-q",
                "tile",
                str(scene),
                "-o",
                str(work / "rs"),
                "--size",
                str(args.tile),
                "--compress",
                "deflate",
            ],
        ),
        (
            "rscrisis tile (imagery + labels)",
            [
                *rscrisis,
                "-q",
                "tile",
                str(scene),
                "-o",
                str(work / "rsl"),
                "--size",
                str(args.tile),
                "--compress",
                "deflate",
                "--labels",
                str(labels),
            ],
        ),
    ]
    retile = shutil.which("gdal_retile.py")
    if retile:
        (work / "gdal").mkdir()
        runs.append(
            (
                "gdal_retile.py",
                [
                    retile,
                    "-q",
                    "-ps",
                    str(args.tile),
                    str(args.tile),
                    "-co",
                    "COMPRESS=DEFLATE",
                    "-co",
                    "PREDICTOR=2",
                    "-co",
                    "TILED=YES",
                    "-targetDir",
                    str(work / "gdal"),
                    str(scene),
                ],
            )
        )
    else:
        print(
            "gdal_retile.py not found: install gdal-bin and python3-gdal to compare",
            file=sys.stderr,
        )
    for name, cmd in runs:
        m = measure(cmd)
        if m["rc"] != 0:
            raise SystemExit(f"{name} failed with exit code {m['rc']}")
        rows.append(
            {
                "tool": name,
                "scene_px": f"{args.size}x{args.size}",
                "tile": args.tile,
                "seconds": round(m["seconds"], 2),
                "mpx_per_s": round(mpx / m["seconds"], 2),
                "peak_rss_mb": round(m["peak_rss_mb"], 1),
            }
        )
    if retile:
        base = next(r for r in rows if r["tool"] == "gdal_retile.py")
        for r in rows:
            r["speedup_vs_gdal_retile"] = round(base["seconds"] / r["seconds"], 2)
    header = list(rows[0].keys() | set().union(*[r.keys() for r in rows]))
    order = [
        "tool",
        "scene_px",
        "tile",
        "seconds",
        "mpx_per_s",
        "peak_rss_mb",
        "speedup_vs_gdal_retile",
    ]
    header = [h for h in order if h in header]
    print(" | ".join(f"{h:>22}" for h in header))
    for r in rows:
        print(" | ".join(f"{r.get(h, '')!s:>22}" for h in header))
    args.results.mkdir(parents=True, exist_ok=True)
    with open(args.results / "bench_tile.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    meta = {"cpu_count": os.cpu_count(), "rows": rows}
    (args.results / "bench_tile.json").write_text(json.dumps(meta, indent=2) + "\n")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
