"""Rotary position embedding for Qwen2.5-VL: vision tower (fp32 math) and text model (eager
rounding in the input dtype), for one tensor or q and k in one launch.

`naive.py` defines the op (eager PyTorch); `triton.py` is the kernel. The public functions run
the kernel for CUDA tensors (or under TRITON_INTERPRET=1) and the definition for plain CPU tensors.
"""

from __future__ import annotations

import torch

from .._device import interpreting
from . import naive
from . import triton as _triton

__all__ = ["rotary", "rotary_qk"]


def _fast(x: torch.Tensor) -> bool:
    return x.is_cuda or interpreting()


def rotary(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    fp32_math: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin; x: [T, H, D], cos, sin: [T, D] or [1, D] (`triton.rotary`)."""
    fn = _triton.rotary if _fast(x) else naive.rotary
    return fn(x, cos, sin, fp32_math, out)


def rotary_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    fp32_math: bool = True,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotary(q), rotary(k)) sharing cos and sin, one launch (`triton.rotary_qk`)."""
    fn = _triton.rotary_qk if _fast(q) else naive.rotary_qk
    return fn(q, k, cos, sin, fp32_math, out)
