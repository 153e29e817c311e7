"""Pyramid attention in plain torch, one query block at a time: the CPU path (see `naive.py` for
the definition).

The reference builds every query's scores against every pooled key at once, [B, HQ, L, ~1.9 L]
fp32 and several temporaries of that size, so a long CPU prompt runs out of memory (a few
thousand tokens already take gigabytes). Here the pooled keys and values are made once and each
query block of `block` rows scores only the keys causality lets it see, so the largest
temporary is [B, HQ, block, ~1.9 L]: memory O(L x block). The math is the reference's, step for
step (fp32, the same ln(count) bias, one softmax over all levels, a query that sees nothing gets 0).
"""

from __future__ import annotations

import math

import torch

from .naive import LEVELS, check_args


def _pooled(x: torch.Tensor, r: int):
    """x [B, HKV, L, D] mean-pooled over groups of r tokens (a final partial group over its own
    tokens) in fp32, with each group's first and last position and token count."""
    L = x.shape[2]
    n = math.ceil(L / r)
    t = torch.arange(n, device=x.device)
    first = t * r
    last = torch.clamp(first + r, max=L) - 1
    count = (last - first + 1).float()
    pooled = torch.nn.functional.pad(x.float(), (0, 0, 0, n * r - L)).unflatten(-2, (n, r)).sum(-2) / count[:, None]
    return pooled, first, last, count


def pyramid_attention_blocked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    levels: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    block: int = 128,
) -> torch.Tensor:
    """Pyramid attention with memory O(L x block); same arguments and result as `naive.pyramid_attention`.

    q: [B, HQ, L, D]; k, v: [B, HKV, L, D] (HQ = G * HKV); levels: [B, HQ, nb, nb] integers in
    {0, 1, 2, 4, 8}, nb = ceil(L / block). causal: default True. scale: default 1 / sqrt(D).
    block: default 128. Returns [B, HQ, L, D] in q's dtype (math in fp32).
    """
    B, HQ, HKV, L, D, nb = check_args(q, k, v, levels, causal, block)
    G = HQ // HKV
    scale = D**-0.5 if scale is None else scale
    dev = q.device
    lev = levels.long().unflatten(1, (HKV, G))  # [B, HKV, G, nb, nb]
    pools = [(r, *_pooled(k, r), _pooled(v, r)[0]) for r in LEVELS]  # (r, kr, first, last, count, vr)
    out = torch.empty(B, HKV, G, L, D, dtype=torch.float32, device=dev)
    for i in range(nb):
        start, end = i * block, min((i + 1) * block, L)
        qi = q[:, :, start:end].float().unflatten(1, (HKV, G))  # [B, HKV, G, bq, D]
        pos = torch.arange(start, end, device=dev)
        scores, values = [], []
        for r, kr, first, last, count, vr in pools:
            n = math.ceil(end / r) if causal else kr.shape[2]  # pooled keys past the block are never visible
            s = torch.einsum("bhgld,bhnd->bhgln", qi, kr[:, :, :n]) * scale + torch.log(count[:n])
            allowed = (lev[:, :, :, i, first[:n] // block] == r)[:, :, :, None, :]  # [B, HKV, G, 1, n]
            if causal:
                allowed = allowed & (last[None, :n] <= pos[:, None])
            scores.append(s.masked_fill(~allowed, float("-inf")))
            values.append(vr[:, :, :n])
        s = torch.cat(scores, -1)
        m = s.amax(-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        p = torch.exp(s - m)
        denom = p.sum(-1, keepdim=True)
        p = p / torch.where(denom > 0, denom, torch.ones_like(denom))
        out[:, :, :, start:end] = torch.einsum("bhgln,bhnd->bhgld", p, torch.cat(values, -2))
    return out.flatten(1, 2).to(q.dtype)
