"""PSA as one call in plain torch with memory O(L x block): the CPU path.

The same steps as `naive.psa_attention` (importance -> cap -> levels -> pyramid attention) with
the two steps whose references hold an L x L score matrix, block importance and pyramid
attention, computed one query block at a time (`block_importance.blocked`, `pyramid_attention.blocked`).
"""

from __future__ import annotations

import torch

from ..block_importance.blocked import block_importance_blocked
from ..level_mask import level_mask
from ..pyramid_attention.blocked import pyramid_attention_blocked
from ..similarity_cap.naive import similarity_cap
from .config import PSAConfig
from .naive import level_stats


def psa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: PSAConfig | None = None):
    """Pyramid Sparse Attention on the CPU; same arguments and result as `naive.psa_attention`.

    q: [B, HQ, L, D]; k, v: [B, HKV, L, D]; config: PSAConfig() when None. Returns (out
    [B, HQ, L, D] in q's dtype, stats of `level_stats`).
    """
    config = PSAConfig() if config is None else config
    scores = block_importance_blocked(
        q, k, block=config.block, stride=config.stride, method=config.method, causal=config.causal
    )
    cap = similarity_cap(k, block=config.block, thresholds=config.thresholds) if config.similarity_cap else None
    levels = level_mask(
        scores, cap, mode=config.mode, ratios=config.ratios, text_blocks=config.text_blocks, causal=config.causal
    )
    out = pyramid_attention_blocked(q, k, v, levels, causal=config.causal, block=config.block)
    return out, level_stats(levels, config.causal)
