"""Which engine runs a model at prediction: eager PyTorch, or ONNX Runtime on a CPU.

On a CPU without native bf16 (AVX2 only, as on most field laptops) PyTorch runs the U-Net in
fp32, and ONNX Runtime's fp32 kernels run the same graph faster with the same outputs (README,
"A faster engine for the model", an idle 2-core AVX2 EPYC: 25.0 against 43.6 windows/s at
128 px, 8.5 against 11.1 at 256 px; mask IoU 1.0 against eager fp32; with other processes on
the cores, 4.6 against 17.8). Where the CPU has native bf16, eager bf16 is faster than ONNX
Runtime's fp32 and stays the default. A dependency is worth it here: PyTorch has no way to
get those kernels.

The model is exported with PyTorch's TorchScript-based ONNX exporter (it needs the ``onnx``
package; the newer ``dynamo`` exporter ran no faster here, takes 15 s instead of 4 and needs
torch 2.5), in memory, once per model and process; a scene's graph is also kept in the user
cache (:mod:`rscrisis.io.cache`), so the next process that maps a scene with the same model
skips the export. The graph is checked against the eager model on a probe batch before it is
used. ``auto`` falls back to PyTorch, with a warning,
when any of this fails; an explicit ``onnxruntime`` raises.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch

from rscrisis.config import EngineName
from rscrisis.errors import InputError, ProcessingError
from rscrisis.ml import device as devices  # read at call time: one place to know the CPU

log = logging.getLogger(__name__)

ENGINES: tuple[str, ...] = get_args(EngineName)
OUTPUTS = ("logits", "iou", "embedding")
#: what :meth:`~rscrisis.ml.model.BuildingSegmenter.scored` adds: the probabilities and their
#: statistics, which the graph computes anyway for the IoU head
SCORED = (*OUTPUTS, "prob", "stats")
#: the largest difference from the eager model, on a probe batch, that an export or a fold may
#: show, relative to the output's largest value where that is above 1 (fp32 kernels differ in
#: summation order: about 1e-5 was seen on logits, 5e-6 of the largest on a deep encoder's)
EXPORT_TOLERANCE = 1e-3
ONNX_OPSET = 17
#: ``auto`` uses ONNX Runtime for jobs of at least this many forward passes of one window (TTA
#: views count): below it the export (2.4 s) costs more than the faster passes save. Measured
#: on an idle 2-core AVX2 CPU: 0.017 s saved per 128 px tile, 0.027 s per 256 px window, so
#: 200 windows save 1 to 3 s net; 104 tiles took 5.4-6.0 s in PyTorch, 6.4-6.6 s in ONNX Runtime.
ONNX_MIN_WINDOWS = 200
#: PyTorch runs the model in bf16 on a CPU with folded batch norms (:func:`folded_model`) for
#: jobs of at least this many window passes. On an idle 2-core AVX512-BF16 EPYC, folding took
#: 0.14-0.18 s (copy, trace, probe check) and took 2.9-9.4 % (median 5.6 %) off the bf16
#: forward of 256 px windows in the same process (23-27 windows/s; README, "Folded batch
#: norms"): it pays off after about 100 windows. In fp32 it was no faster (10.5, 10.4).
FOLD_MIN_WINDOWS = 100
#: ONNX Runtime runs a batch as this many parts at once, one thread each, when it has 2 to
#: this many threads (:class:`OnnxSegmenter`). On an idle 2-core AVX2 EPYC with 256 px
#: windows in batches of 8, the model alone: 14.4 windows/s as two parts of 4 against
#: 13.1-14.3 with the session's two threads splitting every layer; scenes of 17 and 24 Mpx
#: end to end faster in 9 of 10 runs paired in one process, by 2-3 % at the median (README,
#: "Parts of a batch at once"). Only 2 threads were measured; the cap of 4 keeps parts of a
#: batch of 8 at 2 windows or more.
MAX_STREAMS = 4


@dataclass
class Engine:
    """What runs the model: ``model(x, valid)`` -> (logits, iou, embedding), with ``threshold``
    and ``eval()``, under ``amp`` autocast (None: fp32). For ``torch``, the model with its batch
    norms folded (:func:`folded_model`) for large bf16 jobs on a CPU, in channels-last memory
    where ``channels_last``."""

    name: str
    model: object
    amp: torch.dtype | None
    channels_last: bool


def onnxruntime_missing() -> str | None:
    """Why ONNX Runtime cannot run a model here (None when it can)."""
    import importlib.util

    missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{' and '.join(missing)} not installed"
    return None


def select_engine(
    model,
    device: torch.device,
    amp: torch.dtype | None,
    engine: str = "auto",
    *,
    channels_last: bool = False,
    mc_dropout: bool = False,
    windows: int | None = None,
    cache: bool = False,
) -> Engine:
    """The engine for ``model`` on ``device``, given the autocast ``amp`` PyTorch would use.

    ``auto``: ONNX Runtime on a CPU without native bf16 when it is installed, no bf16 autocast
    or MC dropout is asked for, and the job has at least :data:`ONNX_MIN_WINDOWS` forward
    passes (``windows``; None: a job of unknown size, taken as large); PyTorch otherwise.
    ``onnxruntime``: ONNX Runtime or an error that says why not. ``torch``: PyTorch."""
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}", hint=f"use one of {', '.join(ENGINES)}")
    if engine == "torch":
        return _eager(model, device, amp, channels_last, windows)
    why_not = _why_not_onnx(device, amp, mc_dropout)
    small = windows is not None and windows < ONNX_MIN_WINDOWS
    if engine == "auto" and (why_not or small or devices.cpu_has_native_bf16()):
        return _eager(model, device, amp, channels_last, windows)
    if why_not:
        raise InputError(
            f"--engine onnxruntime cannot run here: {why_not}",
            hint='install it (pip install "rscrisis[onnx]"), or use --engine auto or torch',
        )
    try:
        runner = onnx_runner(model, cache=cache)
    except Exception as e:  # auto falls back to PyTorch; the reason is logged
        if engine == "onnxruntime":
            raise ProcessingError(
                f"the model could not run in ONNX Runtime: {e}",
                hint="use --engine torch (and report the model's encoder)",
            ) from e
        log.warning("ONNX Runtime could not run the model (%s); using PyTorch", e)
        return _eager(model, device, amp, channels_last, windows)
    return Engine("onnxruntime", runner, None, False)


def _eager(model, device, amp, channels_last: bool, windows: int | None) -> Engine:
    """PyTorch; with folded batch norms for bf16 jobs on a CPU of :data:`FOLD_MIN_WINDOWS`
    windows or more (in fp32, and on GPUs, folding is not measured to help)."""
    large = windows is None or windows >= FOLD_MIN_WINDOWS
    if large and device.type == "cpu" and amp == torch.bfloat16:
        return Engine("torch", folded_model(model, channels_last), amp, channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Engine("torch", model, amp, channels_last)


def _why_not_onnx(device: torch.device, amp: torch.dtype | None, mc_dropout: bool) -> str | None:
    if device.type != "cpu":
        return f"the model runs on {device.type} (ONNX Runtime is used on CPUs only)"
    if amp is not None:
        return "bf16 is asked for (ONNX Runtime runs the model in fp32)"
    if mc_dropout:
        return "--mc-samples needs dropout at prediction, which the exported graph leaves out"
    return onnxruntime_missing()


class OnnxSegmenter:
    """A :class:`~rscrisis.ml.model.BuildingSegmenter` in eval mode, run by ONNX Runtime.

    Called like the module (``(x, valid)`` tensors in, the three outputs as CPU tensors out) so
    that :func:`rscrisis.ml.tta.forward_views` runs it unchanged, every D4 view included.

    With ``threads`` of 2 to :data:`MAX_STREAMS`, a batch is cut into ``threads`` parts that
    run at once, each on one thread of one shared session (its weights held once), instead of
    every layer being split across the threads. Each part's layers then run without waiting
    for the other threads at every layer, and a core taken by another thread (the reader, the
    writer) delays one part instead of both. :data:`MAX_STREAMS` says what was measured."""

    def __init__(self, graph: bytes, threshold: float, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        import onnxruntime as ort

        self.streams = threads if 2 <= threads <= MAX_STREAMS else 1
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1 if self.streams > 1 else threads
        options.inter_op_num_threads = 1
        # threads sleep between batches instead of spinning, so the reader and writer threads
        # get the cores (also a little faster on its own: 20.4 against 18.5 windows/s)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.threshold = threshold
        # ONNX Runtime releases the GIL while it runs, so Python threads run parts at once
        self._pool = (
            ThreadPoolExecutor(self.streams - 1, thread_name_prefix="rscrisis-onnx")
            if self.streams > 1
            else None
        )
        weakref.finalize(self, _shutdown, self._pool)

    def eval(self) -> OnnxSegmenter:
        return self

    def __call__(self, x: torch.Tensor, valid: torch.Tensor | None = None):
        return self._outputs(OUTPUTS, x, valid)

    def scored(self, x: torch.Tensor, valid: torch.Tensor | None = None):
        """As :meth:`~rscrisis.ml.model.BuildingSegmenter.scored`: the probabilities and their
        statistics come out of the graph, computed by each part's thread."""
        return self._outputs(SCORED, x, valid)

    def _outputs(self, names: tuple[str, ...], x: torch.Tensor, valid: torch.Tensor | None):
        xs = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        if valid is None:
            v = np.ones((xs.shape[0], 1, *xs.shape[2:]), bool)
        else:
            v = np.ascontiguousarray(valid.detach().cpu().numpy(), dtype=bool)
        parts = min(self.streams, len(xs))
        if parts < 2 or self._pool is None:
            outputs = self._run(names, xs, v)
        else:
            bounds = np.linspace(0, len(xs), parts + 1).round().astype(int)
            chunks = [slice(a, b) for a, b in itertools.pairwise(bounds)]
            others = [self._pool.submit(self._run, names, xs[c], v[c]) for c in chunks[1:]]
            first = self._run(names, xs[chunks[0]], v[chunks[0]])  # this thread runs one part
            runs = [first, *(f.result() for f in others)]
            outputs = [np.concatenate(o) for o in zip(*runs, strict=True)]
        return tuple(torch.from_numpy(o) for o in outputs)

    def _run(self, names: tuple[str, ...], xs: np.ndarray, v: np.ndarray) -> list[np.ndarray]:
        return self.session.run(list(names), {"x": xs, "valid": v})


def _shutdown(pool) -> None:
    if pool is not None:
        pool.shutdown(wait=False)


#: one session per live model and state: a worker that maps many scenes exports once
_RUNNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state_key(model) -> tuple:
    """Changes whenever a weight or statistic of ``model`` is replaced or updated in place, or
    its threshold is changed (a constant of the graph and of a folded copy)."""
    tensors = tuple((id(t), t._version) for t in model.state_dict(keep_vars=True).values())
    return (float(model.threshold), *tensors)


def onnx_runner(model, threads: int | None = None, *, cache: bool = False) -> OnnxSegmenter:
    """``model`` exported to ONNX and checked against itself on a probe batch.

    ``cache``: keep the graph in the user cache (:mod:`rscrisis.io.cache`, at most
    :data:`CACHED_GRAPHS` graphs) and take it from there when the same model comes again, in
    any process: the export costs 1.4 s in a fresh process, the cached graph 0.05 s to read.
    The graph is named by a digest of everything it is made from (PyTorch's version, the
    opset, the module tree, every weight and statistic), and is checked against the model
    like a fresh export; one that fails is exported again. The loop's many short-lived models
    (``simulate``) leave it off."""
    threads = threads or torch.get_num_threads()
    key = (_state_key(model), threads)
    cached = _RUNNERS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    with _in_eval_mode(model):
        digest = graph_digest(model) if cache else None
        runner = _cached_runner(model, threads, digest) if digest else None
        if runner is None:
            graph = export_onnx(model)
            runner = OnnxSegmenter(graph, model.threshold, threads)
            _check_same(model, runner)
            if digest:
                from rscrisis.io.cache import write_cached

                write_cached(_GRAPH_KIND, digest, ".onnx", graph, CACHED_GRAPHS)
    _RUNNERS[model] = (key, runner)
    return runner


#: graphs kept in the user cache (about 57 MB each for the resnet18 U-Net)
CACHED_GRAPHS = 4
_GRAPH_KIND = "onnx"


def graph_digest(model) -> str:
    """SHA-256 of what the exported graph of ``model`` depends on: 0.04 s for the resnet18
    U-Net (57 MB of weights). The threshold is a constant of the graph (its statistics feed
    the IoU head) though it is neither a weight nor in the module tree."""
    import hashlib

    h = hashlib.sha256()
    parts = ("rscrisis-onnx-2", torch.__version__, str(ONNX_OPSET), repr(model),
             repr(float(model.threshold)))  # fmt: skip
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    for name, t in model.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _graph_bound(model) -> int:
    """The largest graph a cache entry of ``model`` may be: its weights and some structure."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 2 * weights + 64 * 2**20


def _cached_runner(model, threads: int, digest: str) -> OnnxSegmenter | None:
    from rscrisis.io.cache import read_cached

    graph = read_cached(_GRAPH_KIND, digest, ".onnx", _graph_bound(model))
    if graph is None:
        return None
    try:
        runner = OnnxSegmenter(graph, model.threshold, threads)
        _check_same(model, runner)
    except Exception as e:  # a damaged or foreign entry: export again, which replaces it
        log.warning("the cached ONNX graph %s... is not the model's (%s); exporting again",
                    digest[:12], e)  # fmt: skip
        return None
    log.debug("ONNX graph %s... from the cache", digest[:12])
    return runner


@contextlib.contextmanager
def _in_eval_mode(model) -> Iterator[None]:
    """``model`` in eval mode, and afterwards every module in the mode it had (so a mixed
    state, such as MC dropout's, survives an export or a fold)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def folded_model(model, channels_last: bool = False):
    """``model`` for inference, with every batch norm folded into the convolution before it.

    In eval mode a batch norm is a per-channel scale and shift, which the convolution's weights
    and bias can absorb: one pass over each activation instead of two. Measured with the
    resnet18 U-Net on 256 px windows in bf16 on 2 cores: 3-9 % less time (README, "Folded
    batch norms"; :data:`FOLD_MIN_WINDOWS` says where it is used). What ONNX Runtime
    does to its graph, done to the eager model: the encoder is traced with ``torch.fx`` and
    fused by PyTorch's own ``fuse``; the decoder (not traceable: it loops over a list of
    features) has its ``Conv2d, BatchNorm2d`` pairs in ``Sequential`` blocks folded in place,
    and so has an encoder that ``torch.fx`` cannot trace.

    The result is a copy (``model`` is unchanged, so training and AdaBN still see their batch
    norms), made once per model and state, and checked against ``model`` on a probe batch in
    fp32; where folding or the check fails, ``model`` itself is returned. The copy is in eval
    mode (what it folded); ``model``'s own modes are left as they were."""
    key = (_state_key(model), channels_last)
    cached = _FOLDED.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        with _in_eval_mode(model):
            folded = _fold(model)
            if channels_last:
                folded = folded.to(memory_format=torch.channels_last)
            _check_same(model, folded, "folded model")
    except Exception as e:  # the unfolded model is always right
        log.debug("batch norms not folded (%s)", e)
        folded = model.to(memory_format=torch.channels_last) if channels_last else model
    if folded is not model:  # a value holding its own key would keep the model alive
        _FOLDED[model] = (key, folded)
    return folded


def _fold(model):
    import copy

    from torch import nn
    from torch.fx.experimental.optimization import fuse
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model)
    try:
        folded.unet.encoder = fuse(folded.unet.encoder, inplace=True)
    except Exception as e:  # an encoder torch.fx cannot trace keeps its batch norms
        log.debug("the encoder's batch norms are not folded (%s)", e)
        folded.unet.encoder = copy.deepcopy(model.unet.encoder)
    for block in folded.modules():
        if not isinstance(block, nn.Sequential):
            continue
        for i in range(len(block) - 1):
            conv, norm = block[i], block[i + 1]
            pair = type(conv) is nn.Conv2d and type(norm) is nn.BatchNorm2d
            if pair and norm.track_running_stats and conv.padding_mode == "zeros":
                block[i] = fuse_conv_bn_eval(conv, norm)
                block[i + 1] = nn.Identity()
    return folded


def _in_channels(model) -> int:
    """The image bands the model takes: those of its first convolution."""
    first = next(p for p in model.unet.encoder.parameters() if p.dim() == 4)
    return int(first.shape[1])


class _ScoredGraph(torch.nn.Module):
    """What is exported: the model's :meth:`scored` outputs (:data:`SCORED`)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # the exporter follows the wrapper's own mode

    def forward(self, x: torch.Tensor, valid: torch.Tensor):
        return self.model.scored(x, valid)


def export_onnx(model) -> bytes:
    """The eval-mode model as an ONNX graph, batch size and window size free, with the
    outputs of :data:`SCORED`."""
    channels = _in_channels(model)
    x = torch.zeros(2, channels, 64, 64)
    valid = torch.ones(2, 1, 64, 64, dtype=torch.bool)
    free = {0: "n", 2: "h", 3: "w"}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter announces its deprecation on every call
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _ScoredGraph(model),
            (x, valid),
            buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects
            input_names=["x", "valid"],
            output_names=list(SCORED),
            dynamic_axes={
                **{key: free for key in ("x", "valid", "logits", "prob")},
                **{key: {0: "n"} for key in ("iou", "embedding", "stats")},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buf.getvalue()


def _check_same(model, runner, what: str = "exported graph") -> None:
    """``runner`` gives the eager model's :meth:`scored` outputs (:data:`SCORED`) on a seeded
    probe batch in fp32, at a window size other than the one traced (so no traced size is
    baked in), on the model's device."""
    channels = _in_channels(model)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, 96, 128, generator=g)
    valid = torch.ones(2, 1, 96, 128, dtype=torch.bool)
    valid[1, :, :, 100:] = False
    x, valid = x.to(device), valid.to(device)
    with torch.no_grad():
        want = model.scored(x, valid)
        got = runner.scored(x, valid)
    for name, a, b in zip(SCORED, want, got, strict=True):
        a = a.float()
        if name == "prob":  # the sigmoid of its own logits, checked above against the model's
            # (near 0 an untrained deep encoder's logits, of 1e3, differ by 1e-2: so would p)
            a = torch.sigmoid(got[0].float()).to(a.device)
        diff = float((a - b.float().to(a.device)).abs().max())
        # relative to the output's scale: an untrained deep encoder's logits reach 1e3
        if not diff <= EXPORT_TOLERANCE * max(1.0, float(a.abs().max())):
            raise ProcessingError(
                f"the {what}'s {name} differs from the model's by {diff:.2g}",
                hint="use --engine torch",
            )
