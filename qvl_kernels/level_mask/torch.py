"""PSA levels from block importance in vectorized torch (see `naive.py` for the definition): the
CPU path of `level_mask`, also a GPU fallback and a second opinion in tests.

One stable descending sort per row gives every visible block its rank; the band of each rank is
found with one `searchsorted` against the band starts (topk: a [nb, nb] table shared by all
batches and heads, since n depends only on the row; energybound: the cumulative share of the row
in fp64), written back through the sort indices with one scatter, then the forced blocks, the
cap and causality are single `where`/`minimum` passes. No Python loop over rows or levels, no
host sync: the only host-to-device copy is the band table, made once per (ratios, device).

Cost: dominated by the segmented sort of B * HQ * nb rows of nb fp32 values (nb = 512 at 64K
tokens, block 128) plus about a dozen elementwise passes over [B, HQ, nb, nb]; the Triton kernel
does it all in one read of the scores and one write of the levels.
"""

from __future__ import annotations

import functools

import torch

from .naive import LEVELS, check_args


@functools.lru_cache(maxsize=64)
def _band_table(bands: tuple, device: torch.device):
    """Band starts, ends (fp64) and levels (int8) on `device`, sorted by (start, end)."""
    t = torch.tensor([[a, b, r] for a, b, r in bands], dtype=torch.float64)
    if device.type == "cuda":
        t = t.pin_memory()
    t = t.to(device, non_blocking=True)
    return t[:, 0].contiguous(), t[:, 1].contiguous(), t[:, 2].to(torch.int8)


def _visible(nb: int, causal: bool, device) -> torch.Tensor:
    o = torch.arange(nb, device=device)
    return (o[None, :] <= o[:, None]) if causal else torch.ones(nb, nb, dtype=torch.bool, device=device)


def level_mask_torch(
    scores: torch.Tensor,
    cap: torch.Tensor | None = None,
    *,
    mode: str = "energybound",
    ratios: dict,
    text_blocks: int = 0,
    causal: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`level_mask` in vectorized PyTorch (any device; the CPU path of `level_mask`): the same
    arguments and result, documented there. `scores` must be non-negative.
    """
    B, HQ, nb, bands = check_args(scores, cap, mode, ratios, text_blocks)
    if out is not None and (out.shape != (B, HQ, nb, nb) or out.dtype != torch.int8):
        raise ValueError(f"out must be an int8 tensor of shape [{B}, {HQ}, {nb}, {nb}]")
    dev = scores.device
    start, end, level = _band_table(tuple(bands), dev)
    visible = _visible(nb, causal, dev)  # [nb, nb]
    o = torch.arange(nb, device=dev)
    n = (o + 1 if causal else torch.full_like(o, nb)).double()  # [nb] visible blocks per row

    s = scores.float().masked_fill(~visible, float("-inf"))
    s_sorted, order = torch.sort(s, dim=-1, descending=True, stable=True)  # [B, HQ, nb, nb]
    rho = o.double()
    if mode == "topk":
        # band k holds ranks start_k * n <= rho < end_k * n (fp64, as the reference)
        lo = start[None, :] * n[:, None]  # [nb, K]
        k = torch.searchsorted(lo, rho.expand(nb, nb).contiguous(), right=True) - 1  # [nb, nb]
        kc = k.clamp(min=0)
        ok = (k >= 0) & (rho[None, :] < end[kc] * n[:, None])
        lev_sorted = torch.where(ok, level[kc], 0).to(torch.int8).expand(B, HQ, nb, nb)
    else:
        # band k holds cumulative shares start_k < c <= end_k
        vals = torch.where(rho[None, :] < n[:, None], s_sorted.double(), 0.0)
        cum = torch.cumsum(vals, dim=-1)
        # the total is cum at the last visible rank (same rounding: c = 1 there exactly); a
        # parallel scan may round a trailing-zero prefix above it, hence the clamp (c <= 1 as in
        # the sequential reference)
        total = cum.gather(-1, (n.long() - 1)[:, None].expand(B, HQ, nb, 1))
        c = torch.where(total > 0, (cum / torch.where(total > 0, total, 1.0)).clamp(max=1.0), 0.0)
        k = torch.bucketize(c, start) - 1  # last band with start < c
        kc = k.clamp(min=0)
        ok = (k >= 0) & (c <= end[kc])
        lev_sorted = torch.where(ok, level[kc], 0).to(torch.int8)
    lev = torch.empty(B, HQ, nb, nb, dtype=torch.int8, device=dev)
    lev.scatter_(-1, order, lev_sorted)

    T = min(text_blocks, nb)
    force = (o[:, None] == o[None, :]) | (o[None, :] == 0) | (o[:, None] >= nb - T) | (o[None, :] >= nb - T)
    lev = torch.where(force, torch.ones((), dtype=torch.int8, device=dev), lev)
    if cap is not None:
        HKV = cap.shape[1]
        lev = torch.minimum(lev.view(B, HKV, HQ // HKV, nb, nb), cap.to(torch.int8)[:, :, None, None, :]).view(
            B, HQ, nb, nb
        )
    lev = torch.where(visible, lev, torch.zeros((), dtype=torch.int8, device=dev))
    if out is not None:
        out.copy_(lev)
        return out
    return lev


def density(levels: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Compute budget per (batch, head): [B, HQ] fp32 = sum over visible blocks of 1/r over their
    count (level 0 counts 0). levels: [B, HQ, nb, nb] integers in {0, 1, 2, 4, 8}. No host sync.
    Sparsity is 1 - density."""
    nb = levels.shape[-1]
    lf = levels.float()
    inv = torch.where(lf > 0, 1.0 / lf.clamp(min=1.0), 0.0)
    if causal:
        inv = inv * _visible(nb, True, levels.device)
    count = nb * (nb + 1) / 2 if causal else nb * nb
    return inv.sum((-1, -2)) / count


def level_fractions(levels: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Fraction of visible blocks at each level of LEVELS = (0, 1, 2, 4, 8), per (batch, head):
    [B, HQ, 5] fp32 (rows sum to 1). No host sync."""
    nb = levels.shape[-1]
    count = nb * (nb + 1) / 2 if causal else nb * nb
    vis = _visible(nb, causal, levels.device)
    # five small reductions (not a per-element [.., 5] tensor); level 0 is what is left
    above = torch.stack([((levels == r) & vis).sum((-1, -2)) for r in LEVELS[1:]], -1).float() / count
    return torch.cat([1.0 - above.sum(-1, keepdim=True), above], -1)


_STATS_MAP: dict = {}  # (device, visible blocks) -> (pinned source, device copy) of stats_from_counts' table


def stats_from_counts(counts: torch.Tensor, nb: int, causal: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(density [B, HQ], level_fractions [B, HQ, 5]) from per-head block counts at levels
    1, 2, 4, 8 (counts[..., 1:], int [B, HQ, 5], as `level_mask_triton(counts=...)` fills them).
    Same values as `density(levels)` and `level_fractions(levels)`. No host sync.

    One small float64 matrix product (three launches in all, where the elementwise form took
    eleven: each costs the host ~10-50 us, psa_attention's statistics come last in every call).
    float64 keeps it exact whatever torch's TF32 settings; counts stay far below 2^53."""
    count = nb * (nb + 1) / 2 if causal else nb * nb
    key = (counts.device, count)
    if key not in _STATS_MAP:
        # row 0 the bias, rows 1-5 the weights of counts[..., 0:5] (row 1, for the unused slot 0,
        # stays 0); columns: the five level fractions, then the density
        table = torch.zeros(6, 6, dtype=torch.float64)
        table[0, 0] = 1.0  # level 0 is what is left of 1
        for i, r in enumerate(LEVELS[1:], start=1):
            table[1 + i, 0] = -1.0 / count
            table[1 + i, i] = 1.0 / count
            table[1 + i, 5] = 1.0 / (r * count)
        if counts.is_cuda:  # a pinned source keeps the copy asynchronous (no host sync, even once)
            table = table.pin_memory()
        _STATS_MAP[key] = (table, table.to(counts.device, non_blocking=True))  # the source outlives the copy
    table = _STATS_MAP[key][1]
    bias, w = table[0], table[1:]
    out = torch.addmm(bias, counts.reshape(-1, 5).double(), w).float()  # [B * HQ, 6]
    return out[:, 5].reshape(counts.shape[:-1]), out[:, :5].reshape(counts.shape)
