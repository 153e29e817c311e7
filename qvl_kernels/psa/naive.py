"""PSA as one call through the ops' plain-PyTorch references: what `psa_attention` computes, and
the path that runs it on the CPU (no Triton, no interpreter).
"""

from __future__ import annotations

import torch

from ..block_importance.naive import block_importance
from ..level_mask import density, level_fractions, level_mask
from ..pyramid_attention.naive import pyramid_attention
from ..similarity_cap.naive import similarity_cap
from .config import PSAConfig


def level_stats(levels: torch.Tensor, causal: bool = True) -> dict:
    """Statistics of a level mask, as device tensors (no host sync).

    levels: [B, HQ, nb, nb]. Returns {"density": [B, HQ] fp32 (sum of 1/r over visible blocks
    over their count), "level_fraction": [B, HQ, 5] fp32 (share of visible blocks at each level
    of LEVELS = (0, 1, 2, 4, 8)), "levels": the mask itself}. Sparsity = 1 - density.
    """
    return {"density": density(levels, causal), "level_fraction": level_fractions(levels, causal), "levels": levels}


def psa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: PSAConfig | None = None):
    """Pyramid Sparse Attention from the references: same arguments and result as
    `qvl_kernels.psa.psa_attention` (q: [B, HQ, L, D]; k, v: [B, HKV, L, D]; config: PSAConfig()
    when None; returns (out [B, HQ, L, D], stats of `level_stats`)). The levels come from the
    vectorized torch `level_mask` (the same levels as its naive loop, fast enough for a prompt).
    """
    return psa_steps(q, k, v, config, block_importance, pyramid_attention)


def psa_steps(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: PSAConfig | None, importance, attention):
    """The PSA steps, importance -> cap -> levels -> pyramid attention, with the block importance
    and pyramid attention ops given (`importance`, `attention`: the references here, or the
    bounded-memory ones of `blocked.py`; same arguments as `block_importance` and
    `pyramid_attention`). Arguments and result as `psa_attention`.
    """
    config = PSAConfig() if config is None else config
    scores = importance(q, k, block=config.block, stride=config.stride, method=config.method, causal=config.causal)
    cap = similarity_cap(k, block=config.block, thresholds=config.thresholds) if config.similarity_cap else None
    levels = level_mask(
        scores, cap, mode=config.mode, ratios=config.ratios, text_blocks=config.text_blocks, causal=config.causal
    )
    out = attention(q, k, v, levels, causal=config.causal, block=config.block)
    return out, level_stats(levels, config.causal)
