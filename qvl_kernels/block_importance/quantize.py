"""Per-(batch, head) float8_e4m3fn copies of q and k for fp8 block importance (Triton).

    q8, k8, q_scale, k_scale = quantize_fp8(q, k)   # q ~ q8 * q_scale[..., None, None]

Two launches, each over every q head and every k head at once (grid: row tiles x heads), and no
host sync:

1. amax: each program takes |x| over one tile of rows of one (batch, head) and folds its maximum
   into the head's fp32 slot with an atomic max (the slots are zeroed first).
2. cast: x * (448 / amax), rounded to the nearest e4m3 value (ties to even), into a contiguous
   fp8 copy; the first tile of each head also stores the head's scale amax / 448.

So q and k are read twice and their fp8 copies written once: 2.5x the bytes of bf16 q and k (7B
shape at 64K tokens: 470 + 67 MB read twice, 269 MB written). The largest |value| of a head maps
to 448, the largest finite e4m3 value; a head whose amax is below AMAX_FLOOR (all zeros) is
scaled as if its amax were AMAX_FLOOR (its copy is zeros, its scale finite).

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
def _amax_kernel(x0, x1, amax, s0b, s0h, s0l, s1b, s1h, s1l, L, N0, H0, H1,
                 D: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr):
    i_l, i_bh = tl.program_id(0), tl.program_id(1)
    o_l = i_l * BL + tl.arange(0, BL)
    o_d = tl.arange(0, BD)
    m = (o_l < L)[:, None] & (o_d < D)[None, :]
    x = tl.load(_rows(x0, x1, i_bh, o_l, o_d, s0b, s0h, s0l, s1b, s1h, s1l, N0, H0, H1), mask=m, other=0.0)
    tl.atomic_max(amax + i_bh, tl.max(tl.max(tl.abs(x.to(tl.float32)), 1), 0), sem="relaxed")


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
def _cast_kernel(x0, x1, y0, y1, amax, scale, s0b, s0h, s0l, s1b, s1h, s1l, L, N0, H0, H1,
                 FLOOR: tl.constexpr, QMAX: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr,
                 ROUND: tl.constexpr):
    i_l, i_bh = tl.program_id(0), tl.program_id(1)
    o_l = i_l * BL + tl.arange(0, BL)
    o_d = tl.arange(0, BD)
    m = (o_l < L)[:, None] & (o_d < D)[None, :]
    a = tl.maximum(tl.load(amax + i_bh), FLOOR)
    inv = tl.math.div_rn(QMAX, a)  # IEEE division, as torch's
    x = tl.load(_rows(x0, x1, i_bh, o_l, o_d, s0b, s0h, s0l, s1b, s1h, s1l, N0, H0, H1), mask=m, other=0.0)
    y = x.to(tl.float32) * inv
    if ROUND:  # the interpreter: round first, then the cast is exact
        y = _round_e4m3(y)
    y = y.to(y0.dtype.element_ty)  # GPU: round to nearest even, saturating
    o_y = o_l.to(tl.int64)[:, None] * D + o_d[None, :]  # contiguous [L, D] per head
    if i_bh < N0:
        tl.store(y0 + i_bh.to(tl.int64) * L * D + o_y, y, mask=m)
    else:
        tl.store(y1 + (i_bh - N0).to(tl.int64) * L * D + o_y, y, mask=m)
    if i_l == 0:
        tl.store(scale + i_bh, tl.math.div_rn(a, QMAX))


def quantize_fp8(q: torch.Tensor, k: torch.Tensor):
    """Per-(batch, head) float8_e4m3fn copies of q [B, HQ, L, D] and k [B, HKV, L, D].

    Returns (q8, k8, q_scale, k_scale): contiguous fp8 tensors of q's and k's shapes and fp32
    scales [B, HQ], [B, HKV] with x ~ x8 * scale: scale = max(amax, AMAX_FLOOR) / 448, x8 the
    nearest e4m3 value (ties to even) to x * (448 / max(amax, AMAX_FLOOR)), amax the head's
    largest |value|. Bit for bit `naive.quantize_fp8`. Last dimension contiguous (other strides
    free); CUDA tensors, or any under TRITON_INTERPRET=1. No host sync.
    """
    B, HQ, L, D = q.shape
    HKV = k.shape[1]
    if k.shape != (B, HKV, L, D) or q.dtype != k.dtype:
        raise ValueError("q [B, HQ, L, D] and k [B, HKV, L, D] must share B, L, D and dtype")
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    q8 = torch.empty(B, HQ, L, D, device=q.device, dtype=torch.float8_e4m3fn)
    k8 = torch.empty(B, HKV, L, D, device=q.device, dtype=torch.float8_e4m3fn)
    n0, n = B * HQ, B * (HQ + HKV)
    amax = torch.zeros(n, device=q.device, dtype=torch.float32)
    scale = torch.empty(n, device=q.device, dtype=torch.float32)
    BD = triton.next_power_of_2(D)
    BL = min(max(1, _TILE_ELEMS // BD), triton.next_power_of_2(L))
    grid = (triton.cdiv(L, BL), n)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
    _amax_kernel[grid](q, k, amax, *strides, L, n0, HQ, HKV, D=D, BD=BD, BL=BL, num_warps=4)
    _cast_kernel[grid](q, k, q8, k8, amax, scale, *strides, L, n0, HQ, HKV,
                       FLOOR=AMAX_FLOOR, QMAX=E4M3_MAX, D=D, BD=BD, BL=BL, ROUND=ROUND_IN_KERNEL, num_warps=4)
    return q8, k8, scale[:n0].view(B, HQ), scale[n0:].view(B, HKV)
