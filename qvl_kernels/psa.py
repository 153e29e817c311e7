"""Pyramid Sparse Attention (PSA) as one call: importance -> levels (capped) -> pyramid attention.

    out, stats = psa_attention(q, k, v, PSAConfig.preset("default"))

Every step runs on the device and nothing syncs the host: `stats` holds device tensors (read
them when you need them, e.g. once per generation, not once per layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from ._device import capability
from .block_importance import block_importance
from .level_mask import LEVELS, density, level_fractions, level_mask, level_mask_triton, stats_from_counts
from .level_mask.naive import check_bands
from .similarity_cap import similarity_cap

__all__ = ["LEVELS", "PUBLISHED_RATIOS", "PSAConfig", "density", "level_stats", "psa_attention", "psa_levels"]

# Bands {level: (start, end)} of the published Qwen2.5-VL example (energybound). Level 8's band
# is empty there, so that preset pools at most 4x.
PUBLISHED_RATIOS = {1: (0.0, 0.7), 2: (0.7, 0.8), 4: (0.8, 0.9), 8: (0.9, 0.9), 0: (0.9, 1.0)}

_PRESETS = {
    # published default: keep 70 % of each row's importance at full resolution
    "default": dict(mode="energybound", ratios=PUBLISHED_RATIOS),
    # topk, about 10 % of the dense cost before forced blocks and the cap, most of it at 8x:
    # 1.6 % of the visible blocks at 1x, 2.4 % at 2x, 2.4 % at 4x, 32 % at 8x, the rest skipped.
    # Same achieved density as the earlier 4/4/8/16 % bands (0.16-0.18 on the benchmark's
    # video-like inputs); scaled to exactly 10 %, its error is 5-12 % lower than theirs (H200,
    # 8K-64K, 7B and 3B: docs/benchmarks.md): a coarse view of many blocks beats a sharp view of a few.
    "fast": dict(
        mode="topk", ratios={1: (0.0, 0.016), 2: (0.016, 0.04), 4: (0.04, 0.064), 8: (0.064, 0.384), 0: (0.384, 1.0)}
    ),
    # topk, about 35 %: 18 % at 1x, 20 % at 2x, 20 % at 4x, 20 % at 8x, 22 % skipped
    "balanced": dict(
        mode="topk", ratios={1: (0.0, 0.18), 2: (0.18, 0.38), 4: (0.38, 0.58), 8: (0.58, 0.78), 0: (0.78, 1.0)}
    ),
    # every visible block at level 1: exactly causal attention (for checks and baselines)
    "dense": dict(mode="topk", ratios={1: (0.0, 1.0)}, similarity_cap=False),
}


@dataclass
class PSAConfig:
    """Settings of one PSA call (defaults: the published example with our stride).

    block: 128 tokens per query/key block (a power of two >= 16).
    stride: 8, xattn antidiagonal stride (a power of two <= block).
    method: "xattn" (default) or "pooling" block importance.
    mode: "energybound" (default) or "topk" level assignment.
    ratios: {level: (start, end)} bands, levels in {0, 1, 2, 4, 8}; PUBLISHED_RATIOS by default.
    thresholds: (0.75, 0.70, 0.70) similarity thresholds for levels 2, 4, 8.
    text_length: 0 tokens of text prompt at the end of the sequence, kept at level 1.
    similarity_cap: True, cap each key block's level by its key similarity.
    causal: True.
    importance_fp8: None (auto), True or False (xattn only): block importance on float8_e4m3fn
    copies of q and k (`block_importance(..., fp8=True)`: q scaled per strided row, k per head).
    Auto uses them on Hopper (sm_90) from FP8_AUTO_MIN_TOKENS (32K) tokens, where they are
    measured faster: on an H200 (7B shape, bf16, stride 8, video-like inputs, 2026-11-28) the
    estimate takes 5.5-5.7 % of dense attention's time at 64K instead of 8.2-8.3 %, and 7.1-7.5 %
    at 32K instead of 8.4-9.2 %, quantization included; the levels agree with the bf16
    estimate's on 99.2-99.6 % of visible blocks and the error against dense attention was the
    same to 3 digits (docs/benchmarks.md). Below 32K the quantization costs about what it saves.
    False keeps the exact bf16 estimate everywhere.
    """

    block: int = 128
    stride: int = 8
    method: str = "xattn"
    mode: str = "energybound"
    ratios: dict = field(default_factory=lambda: dict(PUBLISHED_RATIOS))
    thresholds: tuple = (0.75, 0.70, 0.70)
    text_length: int = 0
    similarity_cap: bool = True
    causal: bool = True
    importance_fp8: bool | None = None

    def __post_init__(self) -> None:
        self.method = self.method.lower()
        self.mode = self.mode.lower()
        if self.method not in ("xattn", "pooling"):
            raise ValueError(f"method must be 'xattn' or 'pooling', got {self.method!r}")
        if self.block < 16 or self.block & (self.block - 1):
            raise ValueError(f"block must be a power of two >= 16, got {self.block}")
        if self.stride < 1 or self.stride & (self.stride - 1) or self.stride > self.block:
            raise ValueError(f"stride must be a power of two <= block, got {self.stride}")
        if self.text_length < 0:
            raise ValueError("text_length must be >= 0")
        if self.importance_fp8 and self.method != "xattn":
            raise ValueError("importance_fp8 applies to method='xattn' only")
        self.ratios = {int(r): (float(a), float(b)) for r, (a, b) in self.ratios.items()}
        self.thresholds = tuple(float(t) for t in self.thresholds)
        check_bands(self.mode, self.ratios)
        if len(self.thresholds) != 3:
            raise ValueError("thresholds must be 3 floats (levels 2, 4, 8)")

    @classmethod
    def preset(cls, name: str, **overrides) -> "PSAConfig":
        """A named configuration: "default", "fast", "balanced" or "dense"; keywords override fields."""
        if name not in _PRESETS:
            raise ValueError(f"unknown PSA preset {name!r}; choose one of {sorted(_PRESETS)}")
        return cls(**{**_PRESETS[name], **overrides})

    @property
    def text_blocks(self) -> int:
        return math.ceil(self.text_length / self.block)

    def with_(self, **changes) -> "PSAConfig":
        """A copy with some fields changed (e.g. the text length of this request)."""
        return replace(self, **changes)


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


def level_stats(levels: torch.Tensor, causal: bool = True) -> dict:
    """Statistics of a level mask, as device tensors (no host sync).

    levels: [B, HQ, nb, nb]. Returns {"density": [B, HQ] fp32 (sum of 1/r over visible blocks
    over their count), "level_fraction": [B, HQ, 5] fp32 (share of visible blocks at each level
    of LEVELS = (0, 1, 2, 4, 8)), "levels": the mask itself}. Sparsity = 1 - density.
    """
    return {"density": density(levels, causal), "level_fraction": level_fractions(levels, causal), "levels": levels}


def psa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: PSAConfig | None = None):
    """Pyramid Sparse Attention.

    q: [B, HQ, L, D]; k, v: [B, HKV, L, D] (HQ = G * HKV, query head h reads KV head h // G; K/V
    are never copied per query head); config: PSAConfig() (the published default) when None.
    Returns (out [B, HQ, L, D] in q's dtype, stats) with stats from `level_stats` (device tensors:
    "density" [B, HQ], "level_fraction" [B, HQ, 5], "levels" [B, HQ, nb, nb] int8). No host sync.
    """
    from .pyramid_attention import pyramid_attention

    config = PSAConfig() if config is None else config
    if not q.is_cuda:
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
