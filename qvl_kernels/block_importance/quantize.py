"""float8_e4m3fn copies of q and k for fp8 block importance (Triton).

    q8, k8, q_scale, k_scale = quantize_fp8(q, k, stride=8)
    # q ~ q8 * q_scale per strided row of `stride` tokens, k ~ k8 * k_scale per head

Scales: one per strided row of q (the `stride` tokens whose concatenation is one row of the
xattn GEMM: a scale constant over a row factors out of its dot products, so the importance
kernel applies it per query row) and one per head of k. That makes q, 7x larger than k under the
7B's GQA, a single pass: each program takes whole strided rows, finds their largest |value| and
casts them (read once, fp8 written once); k keeps per-head scales, which take two passes (an
atomic max, then the cast) over its few heads: about half the traffic of per-head scales for q
too, which would take two passes over everything. Two launches, no host sync. The largest |value| of a row (q) or head
(k) maps to 448, the largest finite e4m3 value; a row or head whose amax is below AMAX_FLOOR (all
zeros) is scaled as if its amax were AMAX_FLOOR (its copy is zeros, its scale finite).

Rounding: on a GPU the cast itself (cvt.rn.satfinite: nearest, ties to even, subnormals kept,
as torch's cast). The Triton interpreter's fp32 -> fp8 cast rounds ties away from zero and can
carry a rounded-up mantissa into the wrong exponent, so there the kernel first rounds in fp32 /
int32 arithmetic (`_round_e4m3`, then an exact cast). Not on the GPU: its three int <-> float
conversions per value would cost more than the memory traffic. Either way the bits equal
`naive.quantize_fp8`'s (tests check both). Inputs must be finite.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .naive import AMAX_FLOOR, E4M3_MAX

_TILE_ELEMS = 8192  # values per program (64 rows at D 128): many small programs for a streaming kernel
# Round in arithmetic before the cast (see the docstring): under the interpreter only; tests flip it
# to run `_round_e4m3` on a GPU too.
ROUND_IN_KERNEL = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _rows(x0, x1, i_bh, o_l, o_d, s0b, s0h, s0l, s1b, s1h, s1l, N0, H0, H1):
    # Pointers to rows o_l, columns o_d of head i_bh: q heads first (N0 = B * H0), then k heads.
    if i_bh < N0:
        p = x0 + (i_bh // H0).to(tl.int64) * s0b + (i_bh % H0).to(tl.int64) * s0h + o_l.to(tl.int64)[:, None] * s0l
    else:
        j = i_bh - N0
        p = x1 + (j // H1).to(tl.int64) * s1b + (j % H1).to(tl.int64) * s1h + o_l.to(tl.int64)[:, None] * s1l
    return p + o_d[None, :]


@triton.jit
def _amax_kernel(x, amax, s_b, s_h, s_l, L, H, D: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr):
    # Largest |value| of each (batch, head) of x (k), folded in with an atomic max (slots zeroed).
    i_l, i_bh = tl.program_id(0), tl.program_id(1)
    o_l = i_l * BL + tl.arange(0, BL)
    o_d = tl.arange(0, BD)
    m = (o_l < L)[:, None] & (o_d < D)[None, :]
    b_x = tl.load(_rows(x, x, i_bh, o_l, o_d, s_b, s_h, s_l, s_b, s_h, s_l, 0, H, H), mask=m, other=0.0)
    tl.atomic_max(amax + i_bh, tl.max(tl.max(tl.abs(b_x.to(tl.float32)), 1), 0), sem="relaxed")


@triton.jit
def _round_e4m3(y):
    # y: fp32, |y| <= 448 (+ an fp32 rounding) -> the nearest e4m3 value as fp32, ties to even
    # (for the interpreter's cast; the GPU's rounds so itself).
    b = y.to(tl.int32, bitcast=True)
    a = b & 0x7FFFFFFF
    sign = b ^ a
    # |y| >= 2^-6 (normal e4m3): keep 3 of the 23 mantissa bits; a carry moves into the exponent
    r_norm = tl.minimum((a + 0x7FFFF + ((a >> 20) & 1)) & -0x100000, 0x43E00000)  # at most 448
    # |y| < 2^-6 (subnormal e4m3): multiples of 2^-9; t = |y| * 2^9 and its parts are exact
    t = a.to(tl.float32, bitcast=True) * 512.0
    n = t.to(tl.int32)  # floor (t >= 0)
    f = t - n.to(tl.float32)
    n = n + ((f > 0.5) | ((f == 0.5) & ((n & 1) == 1))).to(tl.int32)
    r_sub = (n.to(tl.float32) * 0.001953125).to(tl.int32, bitcast=True)
    r = tl.where(a < 0x3C800000, r_sub, r_norm)  # 0x3C800000: 2^-6
    return (r | sign).to(tl.float32, bitcast=True)


@triton.jit
def _cast_kernel(
    x0,
    x1,
    y0,
    y1,
    amax,
    scale0,
    scale1,
    s0b,
    s0h,
    s0l,
    s1b,
    s1h,
    s1l,
    L,
    LS,
    N0,
    H0,
    H1,
    FLOOR: tl.constexpr,
    QMAX: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BL: tl.constexpr,
    STRIDE: tl.constexpr,
    ROUND: tl.constexpr,
):
    # Programs (row tiles, B * H0 + B * H1): q heads (per strided-row scales, found here) first,
    # then k heads (per-head scales from amax). BL is a multiple of STRIDE: whole strided rows.
    i_l, i_bh = tl.program_id(0), tl.program_id(1)
    o_l = i_l * BL + tl.arange(0, BL)
    o_d = tl.arange(0, BD)
    m = (o_l < L)[:, None] & (o_d < D)[None, :]
    b_x = tl.load(_rows(x0, x1, i_bh, o_l, o_d, s0b, s0h, s0l, s1b, s1h, s1l, N0, H0, H1), mask=m, other=0.0).to(
        tl.float32
    )  # [BL, BD]; padding is 0, which no amax sees
    NR: tl.constexpr = BL // STRIDE  # strided rows of the tile
    if i_bh < N0:
        a_r = tl.maximum(tl.max(tl.reshape(tl.abs(b_x), [NR, STRIDE * BD]), 1), FLOOR)  # [NR]
        inv = tl.math.div_rn(tl.full([NR], QMAX, tl.float32), a_r)  # IEEE division, as torch's
        y = tl.reshape(tl.reshape(b_x, [NR, STRIDE * BD]) * inv[:, None], [BL, BD])
        o_r = i_l * NR + tl.arange(0, NR)
        tl.store(
            scale0 + i_bh.to(tl.int64) * LS + o_r, tl.math.div_rn(a_r, tl.full([NR], QMAX, tl.float32)), mask=o_r < LS
        )
    else:
        a_h = tl.maximum(tl.load(amax + i_bh - N0), FLOOR)
        y = b_x * tl.math.div_rn(QMAX, a_h)
        if i_l == 0:
            tl.store(scale1 + i_bh - N0, tl.math.div_rn(a_h, QMAX))
    if ROUND:  # the interpreter: round first, then the cast is exact
        y = _round_e4m3(y)
    y = y.to(y0.dtype.element_ty)  # GPU: round to nearest even, saturating
    o_y = o_l.to(tl.int64)[:, None] * D + o_d[None, :]  # contiguous [L, D] per head
    if i_bh < N0:
        tl.store(y0 + i_bh.to(tl.int64) * L * D + o_y, y, mask=m)
    else:
        tl.store(y1 + (i_bh - N0).to(tl.int64) * L * D + o_y, y, mask=m)


def quantize_fp8(q: torch.Tensor, k: torch.Tensor, *, stride: int = 8):
    """float8_e4m3fn copies of q [B, HQ, L, D] and k [B, HKV, L, D] for xattn with `stride`.

    Returns (q8, k8, q_scale, k_scale): contiguous fp8 tensors of q's and k's shapes and fp32
    scales q_scale [B, HQ, ceil(L / stride)] (one per strided row: tokens i*stride ..
    i*stride + stride - 1) and k_scale [B, HKV] (one per head), with x ~ x8 * scale:
    scale = max(amax, AMAX_FLOOR) / 448, x8 the nearest e4m3 value (ties to even) to
    x * (448 / max(amax, AMAX_FLOOR)), amax the row's (q) or head's (k) largest |value|.
    Bit for bit `naive.quantize_fp8`. stride: a power of two. Last dimension contiguous (other
    strides free); CUDA tensors, or any under TRITON_INTERPRET=1. No host sync.
    """
    B, HQ, L, D = q.shape
    HKV = k.shape[1]
    if k.shape != (B, HKV, L, D) or q.dtype != k.dtype:
        raise ValueError("q [B, HQ, L, D] and k [B, HKV, L, D] must share B, L, D and dtype")
    if stride < 1 or stride & (stride - 1):
        raise ValueError(f"stride must be a power of two, got {stride}")
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    LS = triton.cdiv(L, stride)
    q8 = torch.empty(B, HQ, L, D, device=q.device, dtype=torch.float8_e4m3fn)
    k8 = torch.empty(B, HKV, L, D, device=q.device, dtype=torch.float8_e4m3fn)
    n0, n1 = B * HQ, B * HKV
    amax = torch.zeros(n1, device=q.device, dtype=torch.float32)
    q_scale = torch.empty(B, HQ, LS, device=q.device, dtype=torch.float32)
    k_scale = torch.empty(B, HKV, device=q.device, dtype=torch.float32)
    BD = triton.next_power_of_2(D)
    BL = max(stride, min(max(1, _TILE_ELEMS // BD), triton.next_power_of_2(L)))  # whole strided rows
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
    _amax_kernel[(triton.cdiv(L, BL), n1)](
        k, amax, k.stride(0), k.stride(1), k.stride(2), L, HKV, D=D, BD=BD, BL=BL, num_warps=4
    )
    _cast_kernel[(triton.cdiv(L, BL), n0 + n1)](
        q,
        k,
        q8,
        k8,
        amax,
        q_scale,
        k_scale,
        *strides,
        L,
        LS,
        n0,
        HQ,
        HKV,
        FLOOR=AMAX_FLOOR,
        QMAX=E4M3_MAX,
        D=D,
        BD=BD,
        BL=BL,
        STRIDE=stride,
        ROUND=ROUND_IN_KERNEL,
        num_warps=4,
    )
    return q8, k8, q_scale, k_scale
