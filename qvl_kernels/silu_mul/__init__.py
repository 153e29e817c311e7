"""Gated MLP activation silu(gate) * up with eager rounding.

`naive.py` defines the op (eager PyTorch); `triton.py` is the kernel. `silu_mul` runs the kernel
for CUDA tensors (or under TRITON_INTERPRET=1) and the definition for plain CPU tensors.
"""

from __future__ import annotations

import torch

from .._device import interpreting
from . import naive
from . import triton as _triton

__all__ = ["silu_mul"]


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """F.silu(gate) * up; gate, up: [..., I] (halves of a fused gate_up work); `triton.silu_mul`."""
    fn = _triton.silu_mul if gate.is_cuda or interpreting() else naive.silu_mul
    return fn(gate, up)
