"""Where and how precisely to compute: the device, bf16 autocast, seeding.

Shared by training, prediction and adaptation (prediction needs no training code for this).
"""

from __future__ import annotations

import numpy as np
import torch

from rscrisis.errors import InputError


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "--device cuda asked for, but no CUDA GPU is available", hint="use --device cpu or auto"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 autocast where it helps: on CUDA GPUs that support it; fp32 on CPU by default."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: CPUs where bf16 matrix kernels beat fp32 (private torch probes,
    guarded: an older torch simply reports no support)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def fast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Autocast where bf16 is native: like :func:`autocast_dtype`, but ``auto`` also picks
    bf16 on CPUs with native bf16. Whole-scene inference: about 2x faster end to end with a
    mask IoU of 0.999 against fp32 (README, scene benchmark). Few-tile fine-tuning: 2.3x
    faster steps at the same test IoU (README, "Fine-tuning on a few tiles")."""
    if precision == "auto" and device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return autocast_dtype(device, precision)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
