"""PSA level mask: importance -> per-block pooling levels {0, 1, 2, 4, 8}, and density statistics.

`naive.py` defines the op; `triton.py` is the kernel (CUDA), `torch.py` the vectorized version
(CPU) and the statistics; `level_mask` picks one by device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .naive import LEVELS
from .torch import density, level_fractions, level_mask_torch, stats_from_counts
from .triton import level_mask_triton

if TYPE_CHECKING:
    import torch

__all__ = [
    "LEVELS",
    "density",
    "level_fractions",
    "level_mask",
    "level_mask_torch",
    "level_mask_triton",
    "stats_from_counts",
]


def level_mask(scores: torch.Tensor, cap: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """Per-block pooling levels of PSA (definition: `naive.py`).

    scores: [B, HQ, nb, nb] block importance (any float dtype; invisible entries are ignored).
    cap: optional [B, HKV, nb] integer similarity cap (query head h reads KV head
    h // (HQ // HKV)); None applies no cap. mode: "energybound" (default) or "topk".
    ratios: {level: (start, end)} bands, levels in {0, 1, 2, 4, 8}, 0 <= start <= end <= 1, not
    overlapping (e.g. {1: (0.0, 0.7), 2: (0.7, 0.8), 4: (0.8, 0.9), 8: (0.9, 0.9), 0: (0.9, 1.0)}).
    text_blocks: 0, the number of trailing query and key blocks forced to level 1 (the prompt).
    causal: True. out: optional [B, HQ, nb, nb] int8 to write into.
    Returns levels: [B, HQ, nb, nb] int8 in {0, 1, 2, 4, 8}; 0 above the diagonal under causality.

    CUDA tensors: one Triton kernel (`level_mask_triton`); elsewhere the vectorized torch version
    (`level_mask_torch`). Both take exactly these arguments; neither syncs the host.
    """
    fn = level_mask_triton if scores.is_cuda else level_mask_torch
    return fn(scores, cap, **kwargs)
