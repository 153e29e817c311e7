"""PSA as one call in plain torch with memory O(L x block): the CPU path, and fp32 on a GPU.

The same steps as `naive.psa_attention` (importance -> cap -> levels -> pyramid attention) with
the two steps whose references hold an L x L score matrix, block importance and pyramid
attention, computed one query block at a time (`block_importance.blocked`, `pyramid_attention.blocked`).
"""

from __future__ import annotations

import torch

from ..block_importance.blocked import block_importance_blocked
from ..pyramid_attention.blocked import pyramid_attention_blocked
from .config import PSAConfig
from .naive import psa_steps


def psa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: PSAConfig | None = None):
    """Pyramid Sparse Attention without Triton; same arguments and result as `naive.psa_attention`.

    q: [B, HQ, L, D]; k, v: [B, HKV, L, D]; config: PSAConfig() when None. Returns (out
    [B, HQ, L, D] in q's dtype, stats of `level_stats`).
    """
    return psa_steps(q, k, v, config, block_importance_blocked, pyramid_attention_blocked)
