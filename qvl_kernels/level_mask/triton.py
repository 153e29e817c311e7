"""Triton level mask: one program per (batch, head, query block) row does the whole definition of
`naive.py` in registers: sort, bands, forced blocks, cap, causality, one read of the row of scores
and one write of the row of levels.

Sorting: each visible score becomes an int64 key, `order(score) << 32 | (2^31 - 1 - j)`, where
`order` maps fp32 to int32 preserving order; a descending `tl.sort` of the keys then gives the
stable descending order (ties: lower j first), and both the score and j decode from the key (no
gather). Invisible and padding entries get the lowest keys, still carrying their j, so every
position of the row is written exactly once by the scatter store at the end.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .naive import check_args

_INT32_MIN = tl.constexpr(-(2**31))  # key of invisible / padding entries: below every float
_LOW = tl.constexpr(2**31 - 1)  # low word: _LOW - j, so ties sort by ascending j


@triton.jit
def _f32_order(b_x):
    # fp32 -> int32 with the same order (negative floats: flip the magnitude bits); an involution
    b_i = b_x.to(tl.int32, bitcast=True)
    return b_i ^ ((b_i >> 31) & 0x7FFFFFFF)


@triton.jit
def _level_row(
    row,
    HAS_CAP: tl.constexpr,
    HAS_COUNTS: tl.constexpr,
    NBANDS: tl.constexpr,
    TOPK: tl.constexpr,
    BNB: tl.constexpr,
):
    # Row i_i of (batch, head) i_bh, whose n visible key blocks (n <= BNB) are the first n; writes
    # positions 0 .. min(BNB, NB) - 1 of the row's levels. `row` is one tuple (the kernel's
    # arguments and the row's indices) so that the kernel's calls for each sort width stay short;
    # Triton inlines the call, the compiled code is the same as with separate arguments.
    S, CAP, BANDS, OUT, COUNTS, s_sb, s_sh, s_si, HQ, NB, T, G, i_i, i_bh, n = row
    i_b, i_h = i_bh // HQ, i_bh % HQ
    o_j = tl.arange(0, BNB)
    m_vis = o_j < n
    p_s = S + i_b.to(tl.int64) * s_sb + i_h.to(tl.int64) * s_sh + i_i.to(tl.int64) * s_si
    b_s = tl.load(p_s + o_j, mask=m_vis, other=0.0).to(tl.float32)  # [BNB]

    # stable descending order of the visible scores
    b_hi = tl.where(m_vis, _f32_order(b_s), _INT32_MIN).to(tl.int64)
    b_key = (b_hi << 32) | (-o_j + _LOW).to(tl.int64)  # tensor first: the interpreter's constexpr ops
    b_key = tl.sort(b_key, descending=True)  # [BNB], position = rank rho
    o_jr = -(b_key & _LOW).to(tl.int32) + _LOW  # key block at each rank
    b_sr = _f32_order((b_key >> 32).to(tl.int32)).to(tl.float32, bitcast=True)  # its score
    o_rho = tl.arange(0, BNB)
    m_vr = o_rho < n  # visible, in rank order

    if TOPK:
        b_x = o_rho.to(tl.float64)
    else:
        b_cum = tl.cumsum(tl.where(m_vr, b_sr, 0.0).to(tl.float64), 0)
        # total = cum at the last visible rank, so c = 1 there exactly; the scan may round a
        # trailing-zero prefix above it, hence the clamp (c <= 1 as in the sequential reference)
        b_tot = tl.sum(tl.where(o_rho == n - 1, b_cum, 0.0), 0)
        b_x = tl.where(b_tot > 0, tl.minimum(b_cum / tl.where(b_tot > 0, b_tot, 1.0), 1.0), 0.0)
    b_lev = tl.zeros([BNB], dtype=tl.int32)
    for i_k in tl.static_range(NBANDS):
        lo = tl.load(BANDS + 3 * i_k)
        hi = tl.load(BANDS + 3 * i_k + 1)
        r = tl.load(BANDS + 3 * i_k + 2).to(tl.int32)
        if TOPK:  # ranks start * n <= rho < end * n
            m_k = (lo * n <= b_x) & (b_x < hi * n)
        else:  # cumulative shares start < c <= end
            m_k = (lo < b_x) & (b_x <= hi)
        b_lev = tl.where(m_k, r, b_lev)

    m_force = (o_jr == i_i) | (o_jr == 0) | (i_i >= NB - T) | (o_jr >= NB - T)
    b_lev = tl.where(m_force, 1, b_lev)
    if HAS_CAP:
        p_cap = CAP + (i_b * (HQ // G) + i_h // G).to(tl.int64) * NB
        b_cap = tl.load(p_cap + o_jr, mask=m_vr, other=1).to(tl.int32)
        b_lev = tl.minimum(b_lev, b_cap)
    b_lev = tl.where(m_vr, b_lev, 0)
    p_out = OUT + (i_bh.to(tl.int64) * NB + i_i) * NB
    tl.store(p_out + o_jr, b_lev.to(tl.int8), mask=o_jr < NB)
    if HAS_COUNTS:  # blocks of this row at levels 1, 2, 4, 8 (exact integer statistics)
        p_c = COUNTS + i_bh.to(tl.int64) * 5
        for i_c in tl.static_range(4):
            tl.atomic_add(p_c + 1 + i_c, tl.sum((m_vr & (b_lev == (1 << i_c))).to(tl.int32), 0))


@triton.jit
def _zero_tail(OUT, i_bh, i_i, NB, BS: tl.constexpr):
    # Level 0 at positions BS .. NB - 1 of the row (right of the diagonal: a short causal row).
    p_out = OUT + (i_bh.to(tl.int64) * NB + i_i) * NB
    for j0 in range(BS, NB, BS):
        o_j = j0 + tl.arange(0, BS)
        tl.store(p_out + o_j, tl.zeros([BS], dtype=tl.int8), mask=o_j < NB)


@triton.jit
def _level_mask_kernel(
    S,
    CAP,
    BANDS,
    OUT,
    COUNTS,
    s_sb,
    s_sh,
    s_si,
    HQ,
    NB,
    T,
    G,
    HAS_CAP: tl.constexpr,
    HAS_COUNTS: tl.constexpr,
    NBANDS: tl.constexpr,
    TOPK: tl.constexpr,
    CAUSAL: tl.constexpr,
    BNB: tl.constexpr,
    SPLIT: tl.constexpr,
):
    # Grid: (NB, B * HQ): one row i of one (batch, head) per program. SPLIT (causal, BNB >= 256):
    # a row with few visible blocks sorts BNB / 4 or BNB / 2 keys instead of BNB (the sort is the
    # kernel's cost: a quarter of the causal rows need a quarter of the keys) and writes the rest
    # of its row as level 0. One launch: per-length launches cost more than they saved.
    i_i, i_bh = tl.program_id(0), tl.program_id(1)
    if CAUSAL:
        n = i_i + 1
    else:
        n = NB
    row = (S, CAP, BANDS, OUT, COUNTS, s_sb, s_sh, s_si, HQ, NB, T, G, i_i, i_bh, n)
    if SPLIT:
        if n <= BNB // 4:
            _level_row(row, HAS_CAP, HAS_COUNTS, NBANDS, TOPK, BNB // 4)
            _zero_tail(OUT, i_bh, i_i, NB, BNB // 4)
        elif n <= BNB // 2:
            _level_row(row, HAS_CAP, HAS_COUNTS, NBANDS, TOPK, BNB // 2)
            _zero_tail(OUT, i_bh, i_i, NB, BNB // 2)
        else:
            _level_row(row, HAS_CAP, HAS_COUNTS, NBANDS, TOPK, BNB)
    else:
        _level_row(row, HAS_CAP, HAS_COUNTS, NBANDS, TOPK, BNB)


SPLIT_MIN = 256  # BNB from which short causal rows sort a half or a quarter of the keys
_BANDS: dict = {}


def _band_tensor(bands, device):
    key = (tuple(bands), str(device))
    if key not in _BANDS:
        t = torch.tensor([[a, b, r] for a, b, r in bands], dtype=torch.float64)
        if device.type == "cuda":
            t = t.pin_memory()
        _BANDS[key] = t.to(device, non_blocking=True)
    return _BANDS[key]


def _warps(BNB: int) -> int:
    """Warps per row's sort (benchmarks/experiments/variants_level_mask.py; docs/benchmarks.md):
    one warp keeps a 256-512-key sort in shuffles (no shared-memory exchanges between warps) and
    is fastest there; from 1024 keys eight are, with SPLIT on or off. The levels are the same bits
    with every count."""
    if BNB <= 128:
        return 4
    if BNB <= 512:
        return 1
    return 8


def level_mask_triton(
    scores: torch.Tensor,
    cap: torch.Tensor | None = None,
    *,
    mode: str = "energybound",
    ratios: dict,
    text_blocks: int = 0,
    causal: bool = True,
    out: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """`level_mask` as one Triton kernel (same arguments and result; see `level_mask` in `__init__.py`).

    scores: [B, HQ, nb, nb] (last dimension contiguous); cap: [B, HKV, nb] or None.
    counts: optional zeroed int32 [B, HQ, 5]; the kernel adds the number of visible blocks at
    levels 1, 2, 4, 8 to counts[..., 1:] (slot 0 is left alone: level 0 is what remains), which
    `stats_from_counts` turns into the statistics without another pass over the levels.
    Returns [B, HQ, nb, nb] int8. nb up to a few thousand (one row is sorted in registers).
    """
    B, HQ, nb, bands = check_args(scores, cap, mode, ratios, text_blocks)
    if out is None:
        out = torch.empty(B, HQ, nb, nb, device=scores.device, dtype=torch.int8)
    elif out.shape != (B, HQ, nb, nb) or out.dtype != torch.int8 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous int8 tensor of shape [{B}, {HQ}, {nb}, {nb}]")
    if scores.stride(-1) != 1:
        scores = scores.contiguous()
    if cap is not None:
        cap = cap.contiguous()
    if counts is not None and (counts.shape != (B, HQ, 5) or counts.dtype != torch.int32 or not counts.is_contiguous()):
        raise ValueError(f"counts must be a contiguous int32 tensor of shape [{B}, {HQ}, 5]")
    table = _band_tensor(bands, scores.device)
    BNB = max(16, triton.next_power_of_2(nb))
    split = bool(causal) and BNB >= SPLIT_MIN
    _level_mask_kernel[(nb, B * HQ)](
        scores,
        cap if cap is not None else out,
        table,
        out,
        counts if counts is not None else out,
        scores.stride(0),
        scores.stride(1),
        scores.stride(2),
        HQ,
        nb,
        min(text_blocks, nb),
        HQ // cap.shape[1] if cap is not None else 1,
        HAS_CAP=cap is not None,
        HAS_COUNTS=counts is not None,
        NBANDS=len(bands),
        TOPK=mode == "topk",
        CAUSAL=causal,
        BNB=BNB,
        SPLIT=split,
        num_warps=_warps(BNB),
    )
    return out
