"""Pyramid Sparse Attention (PSA) as one call: importance -> levels (capped) -> pyramid attention.

    out, stats = psa_attention(q, k, v, PSAConfig.preset("default"))

Every step runs on the device and nothing syncs the host: `stats` holds device tensors (read
them when you need them, e.g. once per generation, not once per layer).
"""

from __future__ import annotations

import math

import torch

from .._device import capability, fp32_on_gpu, interpreting
from ..block_importance import block_importance
from ..level_mask import LEVELS, density, level_mask, level_mask_triton, stats_from_counts
from ..similarity_cap import similarity_cap
from . import blocked
from .config import PRESETS, PUBLISHED_RATIOS, PSAConfig
from .naive import level_stats

__all__ = [
    "LEVELS",
    "PRESETS",
    "PUBLISHED_RATIOS",
    "PSAConfig",
    "density",
    "level_stats",
    "psa_attention",
    "psa_levels",
]

FP8_AUTO_MIN_TOKENS = 32768  # importance_fp8=None: fp8 estimate on Hopper from this length


def importance_uses_fp8(config: PSAConfig, q: torch.Tensor) -> bool:
    """Whether `psa_levels` estimates importance in fp8 for q [B, HQ, L, D] under config."""
    if config.importance_fp8 is not None:
        return config.importance_fp8
    return (
        config.method == "xattn" and q.is_cuda and q.shape[2] >= FP8_AUTO_MIN_TOKENS and capability(q.device) == (9, 0)
    )


def psa_levels(q: torch.Tensor, k: torch.Tensor, config: PSAConfig, counts: torch.Tensor | None = None) -> torch.Tensor:
    """The level mask PSA uses: q [B, HQ, L, D], k [B, HKV, L, D] -> [B, HQ, nb, nb] int8.

    counts: optional int32 [B, HQ, 5] (CUDA or the interpreter; its contents are overwritten):
    the level kernel also counts the blocks per level into it (see `level_mask_triton`). It is
    zeroed here, after the importance launch, so that its fill does not hold the GPU's first
    kernel back (the host launches one kernel at a time while the GPU waits).
    """
    scores = block_importance(
        q,
        k,
        block=config.block,
        stride=config.stride,
        method=config.method,
        causal=config.causal,
        fp8=importance_uses_fp8(config, q),
    )
    cap = similarity_cap(k, block=config.block, thresholds=config.thresholds) if config.similarity_cap else None
    kw = dict(mode=config.mode, ratios=config.ratios, text_blocks=config.text_blocks, causal=config.causal)
    if counts is not None:
        counts.zero_()
        return level_mask_triton(scores, cap, counts=counts, **kw)
    return level_mask(scores, cap, **kw)


def psa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: PSAConfig | None = None):
    """Pyramid Sparse Attention: the kernels on CUDA tensors (and under TRITON_INTERPRET=1), the
    blocked plain-torch path of `blocked.py` (memory O(L x block), the references' result) on other
    CPU tensors and for fp32 on a GPU (`fp32_on_gpu`).

    q: [B, HQ, L, D]; k, v: [B, HKV, L, D] (HQ = G * HKV, query head h reads KV head h // G; K/V
    are never copied per query head); config: PSAConfig() (the published default) when None.
    Returns (out [B, HQ, L, D] in q's dtype, stats) with stats from `level_stats` (device tensors:
    "density" [B, HQ], "level_fraction" [B, HQ, 5], "levels" [B, HQ, nb, nb] int8). No host sync.
    """
    from ..pyramid_attention import pyramid_attention

    config = PSAConfig() if config is None else config
    if (not q.is_cuda and not interpreting()) or fp32_on_gpu(q):
        return blocked.psa_attention(q, k, v, config)
    if not q.is_cuda:  # the Triton interpreter
        levels = psa_levels(q, k, config)
        out = pyramid_attention(q, k, v, levels, causal=config.causal, block=config.block)
        return out, level_stats(levels, config.causal)
    # Statistics counted by the level kernel (no extra pass over the levels), turned into tensors
    # after the attention is launched: those small torch ops cost ~0.1 ms of host time (profiled),
    # which the GPU would otherwise wait for when the call runs alone (bench_psa_estimate.py).
    B, HQ, L, _ = q.shape
    counts = torch.empty(B, HQ, 5, dtype=torch.int32, device=q.device)  # zeroed by psa_levels
    levels = psa_levels(q, k, config, counts=counts)
    out = pyramid_attention(q, k, v, levels, causal=config.causal, block=config.block)
    d, frac = stats_from_counts(counts, math.ceil(L / config.block), config.causal)
    return out, {"density": d, "level_fraction": frac, "levels": levels}
