"""How fast can the model itself run on a CPU? Eager bf16 against compiled and exported graphs.

Run on demand (not a test); ONNX Runtime is a dependency of rscrisis:

    .venv/bin/python benchmarks/bench_forward.py --model MODEL --scene SCENE \
        --labelled TILESET

The question of issue 18: should scene prediction run the model through int8 dynamic
quantisation, ``torch.compile`` or ONNX Runtime instead of eager PyTorch, at equal IoU (within
0.5 points of fp32)? Every backend runs in a fresh process on the same windows of ``SCENE`` (cut
and normalised exactly as ``rscrisis predict`` does, in memory before timing) and reports:

* windows/s: the median over ``--batches`` batches of ``--batch-size`` after one warm-up batch,
  and the seconds the first batch (kernel creation, compilation, export) took;
* agreement with eager fp32 on those windows: mask IoU (at the model's threshold) and mean
  |delta p|;
* with ``--labelled``, pixel IoU against the tile set's masks (255 ignored), against eager
  fp32's on the same tiles: the "equal IoU" test.

Backends: ``eager-fp32``, ``eager-bf16`` (autocast + channels-last: rscrisis' default on CPUs
with native bf16), ``folded-fp32`` and ``folded-bf16`` (the same with the batch norms folded
into the convolutions, as rscrisis' PyTorch engine runs them:
``rscrisis.ml.engine.folded_model``), ``int8-dynamic``
(``torch.ao.quantization.quantize_dynamic`` of the Linear layers, the only kind it quantises),
``compile-bf16`` (``torch.compile``, inductor), ``ort-fp32`` (ONNX export + ONNX Runtime),
``ort-int8`` (ONNX Runtime static QDQ int8, calibrated on the first batches).

Prints a table and saves it under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BACKENDS = (
    "eager-fp32",
    "eager-bf16",
    "folded-fp32",
    "folded-bf16",
    "int8-dynamic",
    "compile-bf16",
    "ort-fp32",
    "ort-int8",
)


def scene_windows(model_path: Path, scene: Path, n: int, batch_size: int) -> np.ndarray:
    """The scene's first ``n`` full windows, normalised, as rscrisis predict cuts them."""
    from rscrisis.config import SceneConfig
    from rscrisis.ml.model import read_meta
    from rscrisis.predict.scene import StageClock, _read_batches, prepare_scene

    meta = read_meta(model_path)
    prep = prepare_scene(model_path, scene, SceneConfig(batch_size=batch_size))
    mean = np.asarray(meta.mean, np.float32)[:, None, None]
    std = np.asarray(meta.std, np.float32)[:, None, None]
    xs = []
    for batch in _read_batches(prep, batch_size, mean, std, StageClock()):
        if batch.keep.all() and batch.valid.all():
            xs.append(batch.x)
        if len(xs) * batch_size >= n:
            break
    return np.concatenate(xs)[:n]


def labelled_tiles(model_path: Path, tileset: Path) -> tuple[np.ndarray, np.ndarray]:
    """Normalised images and masks (255 = ignore) of a tile set, all of its tiles."""
    import rasterio

    from rscrisis.ml.data import normalise
    from rscrisis.ml.model import read_meta

    meta = read_meta(model_path)
    mean = np.asarray(meta.mean, np.float32)[:, None, None]
    std = np.asarray(meta.std, np.float32)[:, None, None]
    xs, ms = [], []
    for image in sorted((tileset / "images").glob("*.tif")):
        with rasterio.open(image) as ds:
            data = ds.read(list(meta.bands) if meta.bands else None)
            valid = ds.read_masks(1) > 0
        with rasterio.open(tileset / "masks" / image.name) as ds:
            ms.append(ds.read(1))
        xs.append(normalise(data, valid, mean, std))
    return np.stack(xs), np.stack(ms)


# ---- one backend per child process ------------------------------------------------------------


class Runner:
    """``probs(x)``: building probabilities (n, H, W) of a float32 batch, for one backend."""

    def __init__(self, backend: str, model_path: Path, calibration: np.ndarray, work: Path):
        import torch

        from rscrisis.ml.model import load_model

        model, _ = load_model(model_path, "cpu")
        model.eval()
        self.threshold = model.threshold
        self.amp = None
        self.channels_last = False
        self.session = None
        if backend in ("eager-bf16", "compile-bf16", "folded-bf16"):
            self.amp, self.channels_last = torch.bfloat16, True
            model = model.to(memory_format=torch.channels_last)
        if backend.startswith("folded"):
            from rscrisis.ml.engine import folded_model

            model = folded_model(model, self.channels_last)
        if backend == "int8-dynamic":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, torch.qint8)
        if backend == "compile-bf16":
            model = torch.compile(model)
        if backend.startswith("ort"):
            self.session = _ort_session(model, backend, calibration, work)
        self.model = model

    def probs(self, x: np.ndarray) -> np.ndarray:
        import torch

        if self.session is not None:
            (logits,) = self.session.run(["logits"], {"x": x})
            return 1 / (1 + np.exp(-logits[:, 0]))
        t = torch.from_numpy(x)
        if self.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast("cpu", self.amp, enabled=self.amp is not None):
            logits = self.model(t)[0]
        return torch.sigmoid(logits.float())[:, 0].numpy()


def _ort_session(model, backend: str, calibration: np.ndarray, work: Path):
    """An ONNX Runtime session of the segmentation output (the U-Net alone)."""
    import onnxruntime as ort
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.unet(x)

    path = work / "model.onnx"
    if not path.exists():
        torch.onnx.export(
            Logits(model),
            (torch.from_numpy(calibration[:2]),),
            str(path),
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
            dynamo=False,
            opset_version=17,
        )
    if backend == "ort-int8":
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter([{"x": calibration[i : i + 1]} for i in range(len(calibration))])

            def get_next(self):
                return next(self.items, None)

        prepped = work / "model-pre.onnx"
        quant_pre_process(str(path), str(prepped))
        q = work / "model-int8.onnx"
        quantize_static(
            str(prepped),
            str(q),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        path = q
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1))
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def child(args) -> dict:
    import torch

    work = args.workdir
    x = np.load(work / "windows.npy", mmap_mode="r")
    bs = args.batch_size
    t0 = time.perf_counter()
    runner = Runner(args.child, args.model, np.asarray(x[: 4 * bs]), work)
    out = [runner.probs(np.ascontiguousarray(x[:bs]))]  # warm-up: kernels, compilation
    first = time.perf_counter() - t0
    times = []
    for i in range(1, len(x) // bs):
        batch = np.ascontiguousarray(x[i * bs : (i + 1) * bs])
        t = time.perf_counter()
        out.append(runner.probs(batch))
        times.append(time.perf_counter() - t)
    probs = np.concatenate(out)
    np.save(work / f"probs-{args.child}.npy", probs.astype(np.float16))
    result = {
        "windows_per_s": round(bs / float(np.median(times)), 2),
        "first_batch_s": round(first, 2),
        "threads": torch.get_num_threads(),
    }
    if (work / "tiles.npy").exists():
        tiles = np.load(work / "tiles.npy")
        p = np.concatenate([runner.probs(tiles[i : i + bs]) for i in range(0, len(tiles), bs)])
        np.save(work / f"tile-probs-{args.child}.npy", p.astype(np.float16))
    result["threshold"] = runner.threshold
    return result


def _iou(a: np.ndarray, b: np.ndarray, keep: np.ndarray | None = None) -> float:
    if keep is not None:
        a, b = a[keep], b[keep]
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--scene", type=Path, required=True)
    parser.add_argument("--labelled", type=Path, default=None, help="tile set with masks")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per backend")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        res = child(args)
        res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(json.dumps(res))
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_forward_"))
    work.mkdir(parents=True, exist_ok=True)
    x = scene_windows(args.model, args.scene, (args.batches + 1) * args.batch_size, args.batch_size)
    np.save(work / "windows.npy", x)
    masks = None
    if args.labelled:
        tiles, masks = labelled_tiles(args.model, args.labelled)
        np.save(work / "tiles.npy", tiles)
    rows = []
    backends = [b for b in args.backends.split(",") if b]
    if "eager-fp32" in backends:  # the reference runs first
        backends.remove("eager-fp32")
        backends.insert(0, "eager-fp32")
    for backend in backends:
        cmd = [sys.executable, __file__, "--child", backend, "--model", str(args.model),
               "--scene", str(args.scene), "--batch-size", str(args.batch_size),
               "--workdir", str(work)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            tail = proc.stderr.strip().splitlines()[-1:] or ["failed"]
            row = {"backend": backend, "error": tail[0][:200]}
        else:
            row = {"backend": backend, **json.loads(proc.stdout.strip().splitlines()[-1])}
            ref = work / "probs-eager-fp32.npy"
            if backend != "eager-fp32" and ref.exists():
                t = row["threshold"]
                a = np.load(ref).astype(np.float32)
                b = np.load(work / f"probs-{backend}.npy").astype(np.float32)
                row["mask_iou_vs_fp32"] = round(_iou(a > t, b > t), 4)
                row["mean_abs_dp_vs_fp32"] = round(float(np.abs(a - b).mean()), 5)
            if masks is not None:
                p = np.load(work / f"tile-probs-{backend}.npy").astype(np.float32)
                row["labelled_iou"] = round(_iou(p > row["threshold"], masks == 1, masks != 255), 4)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    base = next((r for r in rows if r["backend"] == "eager-bf16" and "windows_per_s" in r), None)
    for r in rows:
        if base and "windows_per_s" in r:
            r["speed_vs_eager_bf16"] = round(r["windows_per_s"] / base["windows_per_s"], 3)
    keys = ["backend", "windows_per_s", "speed_vs_eager_bf16", "first_batch_s", "peak_rss_mb",
            "mask_iou_vs_fp32", "mean_abs_dp_vs_fp32", "labelled_iou", "error"]  # fmt: skip
    keys = [k for k in keys if any(k in r for r in rows)]
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(str(r.get(k, "")) for k in keys))
    args.results.mkdir(parents=True, exist_ok=True)
    with open(args.results / "bench_forward.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (args.results / "bench_forward.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
