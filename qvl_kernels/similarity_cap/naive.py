"""Plain-PyTorch fp32 definition of the similarity cap (PSA step 3).

For every key block of `block` tokens and every pooling level r in (2, 4, 8), the block's
similarity at r is the mean cosine similarity of the key pairs (g*r, g*r + r - 1) inside it,
g = 0, 1, ...: pairs 0-1, 2-3, ... at r = 2 (distance 1), 0-3, 4-7, ... at r = 4 (distance 3) and
0-7, 8-15, ... at r = 8 (distance 7), positions counted from the start of the block. Only pairs
with both keys inside the sequence count; a level with no such pair fails.

The cap is the coarsest level whose similarity is strictly above its threshold (thresholds
(0.75, 0.70, 0.70) for r = 2, 4, 8), or 1 when all fail. Each level is tested on its own (8 can
pass while 2 fails). PSA's final level of a visible block is min(level, cap).

Cosine: dot(a, b) / sqrt(max(|a|^2 |b|^2, EPS^2)), EPS = 1e-8, in fp32.
"""

from __future__ import annotations

import math

import torch

RATIOS = (2, 4, 8)
EPS = 1e-8


def check_args(k, block, thresholds):
    """Shared argument checks; returns (B, HKV, L, D, nb)."""
    if k.dim() != 4:
        raise ValueError("k must be [B, HKV, L, D]")
    B, H, L, D = k.shape
    if L < 1:
        raise ValueError("sequence length must be >= 1")
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    if len(thresholds) != 3:
        raise ValueError(f"thresholds must be 3 floats (for levels 2, 4, 8), got {thresholds!r}")
    return B, H, L, D, math.ceil(L / block)


def block_similarity(k: torch.Tensor, *, block: int = 128, out: torch.Tensor | None = None) -> torch.Tensor:
    """Reference per-block similarity; k: [B, HKV, L, D] -> [B, HKV, nb, 3] fp32 (r = 2, 4, 8).

    A level with no complete pair in the block reads 0.
    """
    B, H, L, D, nb = check_args(k, block, (0.0, 0.0, 0.0))
    kf = torch.nn.functional.pad(k.float(), (0, 0, 0, nb * block - L)).unflatten(2, (nb, block))
    pos = torch.arange(nb * block, device=k.device).view(nb, block)
    sims = []
    for r in RATIOS:
        a, b = kf[..., 0::r, :], kf[..., r - 1 :: r, :]  # [B, H, nb, block / r, D]
        cos = (a * b).sum(-1) / torch.sqrt(torch.clamp((a * a).sum(-1) * (b * b).sum(-1), min=EPS * EPS))
        valid = pos[:, r - 1 :: r] < L  # [nb, block / r]
        n = valid.sum(-1)
        sims.append(torch.where(n > 0, (cos * valid).sum(-1) / n.clamp(min=1), 0.0))
    s = torch.stack(sims, -1)
    if out is not None:
        out.copy_(s)
        return out
    return s


def _pair_counts(L: int, block: int, device) -> torch.Tensor:
    """[nb, 3]: number of complete pairs per block and level."""
    nb = math.ceil(L / block)
    pos = torch.arange(nb * block, device=device).view(nb, block)
    return torch.stack([(pos[:, r - 1 :: r] < L).sum(-1) for r in RATIOS], -1)


def similarity_cap(
    k: torch.Tensor,
    *,
    block: int = 128,
    thresholds: tuple[float, float, float] = (0.75, 0.70, 0.70),
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference similarity cap; k: [B, HKV, L, D] -> [B, HKV, nb] int8 in {1, 2, 4, 8}."""
    B, H, L, D, nb = check_args(k, block, thresholds)
    s = block_similarity(k, block=block)
    ok = (s > torch.tensor(thresholds, dtype=torch.float32, device=k.device)) & (_pair_counts(L, block, k.device) > 0)
    cap = torch.ones(B, H, nb, dtype=torch.int8, device=k.device)
    for i, r in enumerate(RATIOS):  # ascending, so the coarsest passing level wins
        cap = torch.where(ok[..., i], torch.full_like(cap, r), cap)
    if out is not None:
        out.copy_(cap)
        return out
    return cap
