"""Decode attention over a static KV cache (flash-decoding): one new token per sequence.

`naive.py` defines the op; `triton.py` is the kernel (CUDA, or the interpreter); `decode_attention`
picks one by device.
"""

from __future__ import annotations

import torch

from .._device import interpreting
from . import naive
from . import triton as _triton

__all__ = ["decode_attention"]


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    length: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of one new token per sequence over the first `length[b]` slots of its cache.

    q: [B, HQ, D]. k_cache, v_cache: [B, HKV, S, D] (S the capacity; any strides with
    stride(-1) == 1), HQ a multiple of HKV, query head h reads KV head h // (HQ // HKV).
    length: [B] int32/int64 tensor on q's device; slots 0 .. length[b] - 1 are attended to and
    the rest are never read. scale: D ** -0.5 by default.
    Returns [B, HQ, D] in q's dtype (fp32 softmax). CUDA tensors (or TRITON_INTERPRET=1) run the
    Triton kernels, which never synchronise with the host (CUDA-graph safe); CPU tensors run
    the plain-PyTorch definition.
    """
    if q.is_cuda or interpreting():
        return _triton.decode_attention(q, k_cache, v_cache, length, scale)
    return naive.decode_attention(q, k_cache, v_cache, length, scale)
