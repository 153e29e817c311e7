"""RMSNorm (transformers' Qwen2RMSNorm) with an optional fused residual add.

`naive.py` defines the op (eager PyTorch); `triton.py` is the kernel. `rms_norm` runs the kernel
for CUDA tensors (or under TRITON_INTERPRET=1) and the definition for plain CPU tensors.
"""

from __future__ import annotations

import torch

from .._device import interpreting
from . import naive
from . import triton as _triton

__all__ = ["rms_norm"]


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y = RMSNorm(x) (or (y, x + residual)); shapes and rounding: `triton.rms_norm`."""
    fn = _triton.rms_norm if x.is_cuda or interpreting() else naive.rms_norm
    return fn(x, weight, eps, residual)
