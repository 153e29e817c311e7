"""Plain-PyTorch fp32 definition of pyramid attention (PSA step 4).

For query block i and key block j at level r > 0 a query attends to keys and values mean-pooled
over r consecutive tokens of block j, and adds ln(c) to each pooled score, c the number of tokens
the pooled key stands for (r, or fewer for a final partial group when L % r != 0). Causality for a
pooled key covering positions [t*r, e] (e = min(t*r + r, L) - 1): a query at position p may use it
only if e <= p. Level-0 blocks are skipped. One softmax runs over everything a query row uses; a
query that sees no key at all gets 0. With every visible block at level 1 this is exactly
(causal) softmax attention.
"""

from __future__ import annotations

import math

import torch

LEVELS = (1, 2, 4, 8)


def check_args(q, k, v, levels, causal, block):
    """Shared argument checks of the naive and Triton versions; returns (B, HQ, HKV, L, D, nb)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be [B, H, L, D]")
    B, HQ, L, D = q.shape
    HKV = k.shape[1]
    if k.shape != (B, HKV, L, D) or v.shape != k.shape:
        raise ValueError(f"k, v must be [B, HKV, L, D] = [{B}, HKV, {L}, {D}]; got {tuple(k.shape)}, {tuple(v.shape)}")
    if HKV < 1 or HQ % HKV:
        raise ValueError(f"query heads ({HQ}) must be a multiple of KV heads ({HKV})")
    if L < 1:
        raise ValueError("sequence length must be >= 1")
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    nb = math.ceil(L / block)
    if levels.shape != (B, HQ, nb, nb):
        raise ValueError(f"levels must be [B, HQ, nb, nb] = [{B}, {HQ}, {nb}, {nb}], got {tuple(levels.shape)}")
    if levels.dtype not in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64):
        raise ValueError(f"levels must be an integer tensor, got {levels.dtype}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError("q, k, v must share one dtype")
    return B, HQ, HKV, L, D, nb


def pyramid_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    levels: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    block: int = 128,
) -> torch.Tensor:
    """Reference pyramid attention; same arguments and result as the Triton version.

    q: [B, HQ, L, D]; k, v: [B, HKV, L, D] (HQ = G * HKV, query head h reads KV head h // G);
    levels: [B, HQ, nb, nb] integers in {0, 1, 2, 4, 8}, nb = ceil(L / block).
    scale defaults to 1 / sqrt(D). Returns [B, HQ, L, D] in q's dtype (math in fp32).
    Memory is O(L^2): for tests and small checks only.
    """
    B, HQ, HKV, L, D, nb = check_args(q, k, v, levels, causal, block)
    G = HQ // HKV
    scale = D**-0.5 if scale is None else scale
    dev = q.device
    qf = q.float().unflatten(1, (HKV, G))  # [B, HKV, G, L, D]
    lev = levels.long().unflatten(1, (HKV, G))  # [B, HKV, G, nb, nb]
    pos = torch.arange(L, device=dev)
    q_blk = pos // block
    scores, values = [], []
    for r in LEVELS:
        n = math.ceil(L / r)
        t = torch.arange(n, device=dev)
        first = t * r
        last = torch.clamp(first + r, max=L) - 1
        count = (last - first + 1).float()
        pad = n * r - L
        kr = torch.nn.functional.pad(k.float(), (0, 0, 0, pad)).unflatten(-2, (n, r)).sum(-2) / count[:, None]
        vr = torch.nn.functional.pad(v.float(), (0, 0, 0, pad)).unflatten(-2, (n, r)).sum(-2) / count[:, None]
        s = torch.einsum("bhgld,bhnd->bhgln", qf, kr) * scale + torch.log(count)  # [B, HKV, G, L, n]
        k_blk = first // block
        allowed = lev[:, :, :, q_blk[:, None], k_blk[None, :]] == r  # [B, HKV, G, L, n]
        if causal:
            allowed = allowed & (last[None, :] <= pos[:, None])
        scores.append(s.masked_fill(~allowed, float("-inf")))
        values.append(vr)
    s = torch.cat(scores, -1)
    vv = torch.cat(values, -2)  # [B, HKV, sum n, D]
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    denom = p.sum(-1, keepdim=True)
    p = p / torch.where(denom > 0, denom, torch.ones_like(denom))
    out = torch.einsum("bhgln,bhnd->bhgld", p, vv)
    return out.flatten(1, 2).to(q.dtype)
