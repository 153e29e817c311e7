"""Plain-Python definition of PSA levels (step 2 and the cap of step 3), one row at a time.

For every (batch, query head, query block i) row of the importance S [B, HQ, nb, nb]:

- visible key blocks: j <= i under causality (all nb otherwise), n of them;
- rank them by S, descending (ties: lower j first), ranks rho = 0, 1, ..., n-1;
- `topk`: the block at rank rho gets level r when start_r * n <= rho < end_r * n;
- `energybound`: with c = (sum of the rho + 1 largest scores) / (sum of all n), the block gets
  level r when start_r < c <= end_r;
- a visible block in no band gets 0 (skipped);
- force level 1 on the diagonal block, on key block 0 (the attention sink), on every visible
  block of the last `text_blocks` query blocks and on the last `text_blocks` key blocks;
- with a cap [B, HKV, nb] (query head h reads KV head h // G): level = min(level, cap[j]);
- causally invisible blocks are 0.

Bands come from `ratios`, {level: (start, end)}, 0 <= start <= end <= 1, not overlapping.
"""

from __future__ import annotations

import torch

LEVELS = (0, 1, 2, 4, 8)
MODES = ("topk", "energybound")


def check_args(scores, cap, mode, ratios, text_blocks):
    """Shared argument checks; returns (B, HQ, nb, bands sorted by (start, end))."""
    if scores.dim() != 4 or scores.shape[-1] != scores.shape[-2]:
        raise ValueError("scores must be [B, HQ, nb, nb]")
    B, HQ, nb, _ = scores.shape
    if cap is not None:
        if cap.dim() != 3 or cap.shape[0] != B or cap.shape[2] != nb or cap.shape[1] < 1 or HQ % cap.shape[1]:
            raise ValueError(f"cap must be [B, HKV, nb] with HQ ({HQ}) a multiple of HKV, got {tuple(cap.shape)}")
    if text_blocks < 0:
        raise ValueError("text_blocks must be >= 0")
    return B, HQ, nb, check_bands(mode, ratios)


def check_bands(mode: str, ratios: dict) -> list:
    """Validate mode and ratios; returns the bands [(start, end, level)] sorted by (start, end)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    bands = sorted((float(a), float(b), int(r)) for r, (a, b) in ratios.items())
    for a, b, r in bands:
        if r not in LEVELS:
            raise ValueError(f"ratios: level {r} is not one of {LEVELS}")
        if not 0.0 <= a <= b <= 1.0:
            raise ValueError(f"ratios: band {(a, b)} of level {r} must satisfy 0 <= start <= end <= 1")
    for (_, b0, r0), (a1, _, r1) in zip(bands, bands[1:]):
        if a1 < b0:
            raise ValueError(f"ratios: bands of levels {r0} and {r1} overlap")
    return bands


def level_mask(
    scores: torch.Tensor,
    cap: torch.Tensor | None = None,
    *,
    mode: str = "energybound",
    ratios: dict,
    text_blocks: int = 0,
    causal: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference levels: [B, HQ, nb, nb] int8 in {0, 1, 2, 4, 8}; same arguments as the fast op."""
    B, HQ, nb, bands = check_args(scores, cap, mode, ratios, text_blocks)
    G = HQ // cap.shape[1] if cap is not None else 1
    S = scores.detach().float().cpu().tolist()
    C = cap.cpu().tolist() if cap is not None else None
    T = min(text_blocks, nb)
    lev = torch.zeros(B, HQ, nb, nb, dtype=torch.int8)
    for b in range(B):
        for h in range(HQ):
            for i in range(nb):
                vis = list(range(i + 1)) if causal else list(range(nb))
                n = len(vis)
                order = sorted(vis, key=lambda j: -S[b][h][i][j])  # stable: ties keep lower j first
                total = 0.0
                for j in order:
                    total += S[b][h][i][j]
                cum = 0.0
                row = [0] * nb
                for rho, j in enumerate(order):
                    cum += S[b][h][i][j]
                    c = cum / total if total > 0 else 0.0
                    for a, e, r in bands:
                        if mode == "topk" and a * n <= rho < e * n:
                            row[j] = r
                        if mode == "energybound" and a < c <= e:
                            row[j] = r
                for j in vis:
                    if j == i or j == 0 or i >= nb - T or j >= nb - T:
                        row[j] = 1
                    if C is not None:
                        row[j] = min(row[j], C[b][h // G][j])
                lev[b, h, i] = torch.tensor(row, dtype=torch.int8)
    lev = lev.to(scores.device)
    if out is not None:
        out.copy_(lev)
        return out
    return lev


def density(levels: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Reference density per (batch, head): [B, HQ] fp32, sum over visible blocks of 1/r over their count."""
    B, HQ, nb, _ = levels.shape
    L = levels.cpu().tolist()
    d = torch.zeros(B, HQ)
    for b in range(B):
        for h in range(HQ):
            num, cnt = 0.0, 0
            for i in range(nb):
                for j in range(i + 1 if causal else nb):
                    cnt += 1
                    num += 1.0 / L[b][h][i][j] if L[b][h][i][j] > 0 else 0.0
            d[b, h] = num / cnt
    return d.to(levels.device)
