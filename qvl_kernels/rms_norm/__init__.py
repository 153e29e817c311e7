"""RMSNorm (transformers' Qwen2RMSNorm) with an optional fused residual add.

`naive.py` defines the op (eager PyTorch); `triton.py` is the kernel. `rms_norm` runs the kernel
for CUDA tensors (or under TRITON_INTERPRET=1) and the definition for plain CPU tensors.
"""

from __future__ import annotations

from .._device import by_device
from . import naive
from . import triton as _triton

__all__ = ["rms_norm"]

rms_norm = by_device(naive.rms_norm, _triton.rms_norm)
