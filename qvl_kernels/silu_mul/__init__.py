"""Gated MLP activation silu(gate) * up with eager rounding.

`naive.py` defines the op (eager PyTorch); `triton.py` is the kernel. `silu_mul` runs the kernel
for CUDA tensors (or under TRITON_INTERPRET=1) and the definition for plain CPU tensors.
"""

from __future__ import annotations

from .._device import by_device
from . import naive
from . import triton as _triton

__all__ = ["silu_mul"]

silu_mul = by_device(naive.silu_mul, _triton.silu_mul)
