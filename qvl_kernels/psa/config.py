"""PSA's settings: `PSAConfig` and the named presets, defined here once."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..level_mask.naive import check_bands

# Bands {level: (start, end)} of the published Qwen2.5-VL example (energybound). Level 8's band
# is empty there, so that preset pools at most 4x.
PUBLISHED_RATIOS = {1: (0.0, 0.7), 2: (0.7, 0.8), 4: (0.8, 0.9), 8: (0.9, 0.9), 0: (0.9, 1.0)}

PRESETS = {
    # published default: keep 70 % of each row's importance at full resolution
    "default": dict(mode="energybound", ratios=PUBLISHED_RATIOS),
    # topk, about 10 % of the dense cost before forced blocks and the cap, most of it at 8x:
    # 1.6 % of the visible blocks at 1x, 2.4 % at 2x, 2.4 % at 4x, 32 % at 8x, the rest skipped.
    # At the same density a coarse view of many blocks errs less than a sharp view of a few
    # (docs/benchmarks.md).
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
    Auto uses them on Hopper (sm_90) from FP8_AUTO_MIN_TOKENS (32K) tokens, where the estimate
    is faster with the same levels on nearly every block and the same error against dense
    attention; below that the quantization costs about what it saves (docs/benchmarks.md).
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
        if name not in PRESETS:
            raise ValueError(f"unknown PSA preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def text_blocks(self) -> int:
        return math.ceil(self.text_length / self.block)

    def with_(self, **changes) -> "PSAConfig":
        """A copy with some fields changed (e.g. the text length of this request)."""
        return replace(self, **changes)
