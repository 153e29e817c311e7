"""Decode attention over a static KV cache (flash-decoding): one new token per sequence.

`naive.py` defines the op; `triton.py` is the kernel. `decode_attention` runs the kernel for CUDA
tensors (or under TRITON_INTERPRET=1), which never synchronises with the host (CUDA-graph safe),
and the definition for plain CPU tensors.
"""

from __future__ import annotations

from .._device import by_device
from . import naive
from . import triton as _triton

__all__ = ["decode_attention"]

decode_attention = by_device(naive.decode_attention, _triton.decode_attention)
