"""Scratch allocator for on-device TMA descriptors (`tl.make_tensor_descriptor`), set once.

Kernels that build tensor descriptors on the device need Triton to hand them a small global
scratch buffer; Triton asks the allocator set here. Shared by every qvl_kernels op that uses TMA.
"""

from __future__ import annotations

import os

import torch
import triton

_SET = []


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _allocator(size: int, alignment: int, stream):
    return torch.empty(size, device="cpu" if _interpreting() else "cuda", dtype=torch.int8)


def ensure_tma_allocator() -> None:
    """Install the descriptor scratch allocator (idempotent)."""
    if not _SET:
        triton.set_allocator(_allocator)
        _SET.append(True)


def tma_ok(*tensors: torch.Tensor) -> bool:
    """Whether TMA can load these tensors: unit stride along the last dim, 16-byte aligned rows and bases."""
    return all(
        t.stride(-1) == 1 and (t.stride(-2) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0 for t in tensors
    )


def tma_ok_whole(*tensors: torch.Tensor) -> bool:
    """Whether one descriptor can cover each whole tensor (any rank) or any slice of it: unit last
    stride, every other stride and the base 16-byte aligned."""
    return all(
        t.stride(-1) == 1
        and t.data_ptr() % 16 == 0
        and all((st * t.element_size()) % 16 == 0 for st in t.stride()[:-1])
        for t in tensors
    )
