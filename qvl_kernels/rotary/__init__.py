"""Rotary position embedding for Qwen2.5-VL: vision tower (fp32 math) and text model (eager
rounding in the input dtype), for one tensor or q and k in one launch.

`naive.py` defines the op (eager PyTorch); `triton.py` is the kernel. The public functions run
the kernel for CUDA tensors (or under TRITON_INTERPRET=1) and the definition for plain CPU tensors.
"""

from __future__ import annotations

from .._device import by_device
from . import naive
from . import triton as _triton

__all__ = ["rotary", "rotary_qk"]

rotary = by_device(naive.rotary, _triton.rotary)
rotary_qk = by_device(naive.rotary_qk, _triton.rotary_qk)
