"""Triton kernels for Pyramid Sparse Attention (PSA), each with a plain-PyTorch reference.

Depends on torch and triton only: never on transformers or qvl.

    from qvl_kernels import PSAConfig, psa_attention
    out, stats = psa_attention(q, k, v, PSAConfig.preset("balanced"))

Ops (one folder each, `naive.py` beside the fast version): block_importance, similarity_cap,
level_mask, pyramid_attention, pooling (mean_pool, mean_pool_kv). `psa_attention` composes them.
decode_attention serves the decode loop (one new token over a static KV cache), and
fused elementwise ops for the vision tower and decode step, each matching transformers' eager
results: rms_norm, rotary (rotary, rotary_qk), silu_mul.
"""

from .block_importance import block_importance
from .decode_attention import decode_attention
from .level_mask import (
    LEVELS,
    density,
    level_fractions,
    level_mask,
    level_mask_torch,
    level_mask_triton,
    stats_from_counts,
)
from .pooling import mean_pool, mean_pool_kv
from .psa import PUBLISHED_RATIOS, PSAConfig, level_stats, psa_attention, psa_levels
from .pyramid_attention import build_block_lists, pyramid_attention
from .rms_norm import rms_norm
from .rotary import rotary, rotary_qk
from .silu_mul import silu_mul
from .similarity_cap import block_similarity, similarity_cap

__all__ = [
    "LEVELS",
    "PUBLISHED_RATIOS",
    "PSAConfig",
    "block_importance",
    "block_similarity",
    "build_block_lists",
    "decode_attention",
    "density",
    "level_fractions",
    "level_mask",
    "level_mask_torch",
    "level_mask_triton",
    "level_stats",
    "mean_pool",
    "mean_pool_kv",
    "psa_attention",
    "psa_levels",
    "pyramid_attention",
    "rms_norm",
    "rotary",
    "rotary_qk",
    "silu_mul",
    "similarity_cap",
    "stats_from_counts",
]
