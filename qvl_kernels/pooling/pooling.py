"""Triton mean-pool over the sequence: one pass over x writes the 2x, 4x and 8x pools."""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .naive import _check


@triton.jit
def _halve_and_store(b_s, Y, i_t, i_bh, L, o_d, m_d, R: tl.constexpr, D: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, STORE: tl.constexpr):
    # b_s: [BLOCK_T * 2 // R, BD] sums at ratio R // 2 -> pair sums at ratio R; stores their means.
    NT: tl.constexpr = BLOCK_T // R
    b_s = tl.sum(tl.reshape(b_s, (NT, 2, BLOCK_D)), axis=1)  # [NT, BD]
    if STORE:
        o_p = i_t * NT + tl.arange(0, NT)  # pooled index
        b_cnt = tl.minimum(L - o_p * R, R).to(tl.float32)
        b_y = b_s / tl.maximum(b_cnt, 1.0)[:, None]
        L_R = (L + R - 1) // R
        o_y = i_bh.to(tl.int64) * L_R * D + o_p[:, None].to(tl.int64) * D + o_d[None, :]
        tl.store(Y + o_y, b_y.to(Y.dtype.element_ty), mask=(o_p[:, None] < L_R) & m_d[None, :])
    return b_s


@triton.jit
def _mean_pool_kernel(
    X, Y2, Y4, Y8,
    s_xb, s_xh, s_xl, s_xd,
    H, L,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    STORE2: tl.constexpr,
    STORE4: tl.constexpr,
    STORE8: tl.constexpr,
):
    # One program pools BLOCK_T tokens (a multiple of 8) of one (batch, head) row.
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    p_x = X + i_b.to(tl.int64) * s_xb + i_h.to(tl.int64) * s_xh \
        + o_t[:, None].to(tl.int64) * s_xl + o_d[None, :] * s_xd
    b_x = tl.load(p_x, mask=(o_t[:, None] < L) & m_d[None, :], other=0.0).to(tl.float32)  # [BT, BD]
    # Successive halving: the 4x sums are pair sums of the 2x sums, and so on.
    b_s = _halve_and_store(b_x, Y2, i_t, i_bh, L, o_d, m_d, 2, D, BLOCK_T, BLOCK_D, STORE2)
    b_s = _halve_and_store(b_s, Y4, i_t, i_bh, L, o_d, m_d, 4, D, BLOCK_T, BLOCK_D, STORE4)
    b_s = _halve_and_store(b_s, Y8, i_t, i_bh, L, o_d, m_d, 8, D, BLOCK_T, BLOCK_D, STORE8)


def _mean_pool_fwd(x: torch.Tensor, ratios: tuple[int, ...], block_t: int = 64) -> tuple[torch.Tensor, ...]:
    _check(x, ratios)
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError("mean_pool runs on CUDA tensors (or under TRITON_INTERPRET=1); "
                         "for CPU tensors use qvl_kernels.pooling.naive.mean_pool")
    B, H, L, D = x.shape
    outs = {r: torch.empty(B, H, math.ceil(L / r), D, device=x.device, dtype=x.dtype) for r in ratios}
    dummy = next(iter(outs.values()))
    grid = (triton.cdiv(L, block_t), B * H)
    _mean_pool_kernel[grid](
        x, outs.get(2, dummy), outs.get(4, dummy), outs.get(8, dummy),
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        H, L,
        D=D, BLOCK_D=triton.next_power_of_2(D), BLOCK_T=block_t,
        STORE2=2 in outs, STORE4=4 in outs, STORE8=8 in outs,
        num_warps=4,
    )
    return tuple(outs[r] for r in ratios)


def mean_pool(x: torch.Tensor, ratios: tuple[int, ...] = (2, 4, 8)) -> tuple[torch.Tensor, ...]:
    """Mean over groups of r consecutive tokens, for every r in `ratios` (a subset of 2, 4, 8).

    x: [B, H, L, D], any strides, fp32/fp16/bf16; L any length >= 1.
    Returns one contiguous tensor per ratio, [B, H, ceil(L / r), D], in x's dtype, accumulated
    in fp32. Group t covers tokens [t*r, min(t*r + r, L)): a final partial group averages only
    the tokens that exist. With L % r == 0 this is `x.unflatten(-2, (-1, r)).mean(-2)`.
    One launch reads x once and writes all requested ratios.
    """
    return _mean_pool_fwd(x, tuple(ratios))
