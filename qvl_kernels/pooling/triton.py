"""Triton mean-pool over the sequence: one pass over x writes the 2x, 4x and 8x pools (k and v
in one launch with `mean_pool_kv`)."""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .naive import _check


@triton.jit
def _store_mean(Y, b_s, o_p, R: tl.constexpr, i_bh, L, o_d, m_d, D: tl.constexpr, STORE: tl.constexpr):
    # b_s: [NG, BD] sums of pooled rows o_p at ratio R -> their means (the last one may be partial).
    if STORE:
        b_cnt = tl.minimum(L - o_p * R, R).to(tl.float32)
        L_R = (L + R - 1) // R
        o_y = i_bh.to(tl.int64) * L_R * D + o_p[:, None].to(tl.int64) * D + o_d[None, :]
        tl.store(
            Y + o_y,
            (b_s / tl.maximum(b_cnt, 1.0)[:, None]).to(Y.dtype.element_ty),
            mask=(o_p[:, None] < L_R) & m_d[None, :],
        )


@triton.jit
def _pool_rows(
    X,
    Y2,
    Y4,
    Y8,
    s_xb,
    s_xh,
    s_xl,
    s_xd,
    o_g,
    i_bh,
    H,
    L,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    STORE2: tl.constexpr,
    STORE4: tl.constexpr,
    STORE8: tl.constexpr,
):
    # Groups o_g (NG of them) of 8 tokens of one (batch, head) row. Token j of every group is one
    # [NG, BD] load, so all the pooling is elementwise adds of tiles in one register layout (no
    # shuffles or shared-memory round trips, which a reshape-and-sum over the token axis costs):
    # 2x sums are pairs of tokens, 4x sums pairs of 2x sums, 8x the pair of 4x sums.
    i_b, i_h = i_bh // H, i_bh % H
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    o_t = o_g * 8
    p_x = X + i_b.to(tl.int64) * s_xb + i_h.to(tl.int64) * s_xh + o_t[:, None].to(tl.int64) * s_xl + o_d[None, :] * s_xd
    x0 = tl.load(p_x, mask=(o_t[:, None] < L) & m_d[None, :], other=0.0).to(tl.float32)
    x1 = tl.load(p_x + s_xl, mask=(o_t[:, None] + 1 < L) & m_d[None, :], other=0.0).to(tl.float32)
    x2 = tl.load(p_x + 2 * s_xl, mask=(o_t[:, None] + 2 < L) & m_d[None, :], other=0.0).to(tl.float32)
    x3 = tl.load(p_x + 3 * s_xl, mask=(o_t[:, None] + 3 < L) & m_d[None, :], other=0.0).to(tl.float32)
    x4 = tl.load(p_x + 4 * s_xl, mask=(o_t[:, None] + 4 < L) & m_d[None, :], other=0.0).to(tl.float32)
    x5 = tl.load(p_x + 5 * s_xl, mask=(o_t[:, None] + 5 < L) & m_d[None, :], other=0.0).to(tl.float32)
    x6 = tl.load(p_x + 6 * s_xl, mask=(o_t[:, None] + 6 < L) & m_d[None, :], other=0.0).to(tl.float32)
    x7 = tl.load(p_x + 7 * s_xl, mask=(o_t[:, None] + 7 < L) & m_d[None, :], other=0.0).to(tl.float32)
    a0, a1, a2, a3 = x0 + x1, x2 + x3, x4 + x5, x6 + x7
    _store_mean(Y2, a0, o_g * 4, 2, i_bh, L, o_d, m_d, D, STORE2)
    _store_mean(Y2, a1, o_g * 4 + 1, 2, i_bh, L, o_d, m_d, D, STORE2)
    _store_mean(Y2, a2, o_g * 4 + 2, 2, i_bh, L, o_d, m_d, D, STORE2)
    _store_mean(Y2, a3, o_g * 4 + 3, 2, i_bh, L, o_d, m_d, D, STORE2)
    b0, b1 = a0 + a1, a2 + a3
    _store_mean(Y4, b0, o_g * 2, 4, i_bh, L, o_d, m_d, D, STORE4)
    _store_mean(Y4, b1, o_g * 2 + 1, 4, i_bh, L, o_d, m_d, D, STORE4)
    _store_mean(Y8, b0 + b1, o_g, 8, i_bh, L, o_d, m_d, D, STORE8)


@triton.jit
def _mean_pool_kernel(
    X0,
    Y02,
    Y04,
    Y08,
    s0b,
    s0h,
    s0l,
    s0d,
    X1,
    Y12,
    Y14,
    Y18,
    s1b,
    s1h,
    s1l,
    s1d,
    H,
    L,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NG: tl.constexpr,
    STORE2: tl.constexpr,
    STORE4: tl.constexpr,
    STORE8: tl.constexpr,
):
    # Grid (token tiles, B * H, inputs): input 0, and input 1 when two are pooled in one launch
    # (k and v for pyramid attention: one launch fewer for the host to make).
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    o_g = i_t * NG + tl.arange(0, NG)  # the tile's groups of 8 tokens, the same for both inputs
    if tl.program_id(2) == 0:
        _pool_rows(X0, Y02, Y04, Y08, s0b, s0h, s0l, s0d, o_g, i_bh, H, L, D, BLOCK_D, STORE2, STORE4, STORE8)
    else:
        _pool_rows(X1, Y12, Y14, Y18, s1b, s1h, s1l, s1d, o_g, i_bh, H, L, D, BLOCK_D, STORE2, STORE4, STORE8)


def _mean_pool_fwd(xs: tuple[torch.Tensor, ...], ratios: tuple[int, ...], block_t: int = 64) -> list[tuple]:
    # One launch for one or two inputs of one shape; a tuple of pools per input.
    for x in xs:
        _check(x, ratios)
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise ValueError(
                "mean_pool runs on CUDA tensors (or under TRITON_INTERPRET=1); "
                "for CPU tensors use qvl_kernels.pooling.naive.mean_pool"
            )
    if len(xs) == 2 and (xs[0].shape != xs[1].shape or xs[0].dtype != xs[1].dtype):
        raise ValueError(
            f"k and v must share shape and dtype, got {tuple(xs[0].shape)} {xs[0].dtype} "
            f"and {tuple(xs[1].shape)} {xs[1].dtype}"
        )
    B, H, L, D = xs[0].shape
    outs = [{r: torch.empty(B, H, math.ceil(L / r), D, device=x.device, dtype=x.dtype) for r in ratios} for x in xs]
    args = []
    for i in (0, 1):  # the kernel's two input slots; with one input the second repeats it (grid z = 1: unread)
        x, o = xs[min(i, len(xs) - 1)], outs[min(i, len(xs) - 1)]
        dummy = next(iter(o.values()))
        args += [x, o.get(2, dummy), o.get(4, dummy), o.get(8, dummy), *x.stride()]
    grid = (triton.cdiv(L, block_t), B * H, len(xs))
    _mean_pool_kernel[grid](
        *args,
        H,
        L,
        D=D,
        BLOCK_D=triton.next_power_of_2(D),
        NG=block_t // 8,
        STORE2=2 in ratios,
        STORE4=4 in ratios,
        STORE8=8 in ratios,
        num_warps=4,
    )
    return [tuple(o[r] for r in ratios) for o in outs]


def mean_pool(x: torch.Tensor, ratios: tuple[int, ...] = (2, 4, 8)) -> tuple[torch.Tensor, ...]:
    """Mean over groups of r consecutive tokens, for every r in `ratios` (a subset of 2, 4, 8).

    x: [B, H, L, D], any strides, fp32/fp16/bf16; L any length >= 1.
    Returns one contiguous tensor per ratio, [B, H, ceil(L / r), D], in x's dtype, accumulated
    in fp32. Group t covers tokens [t*r, min(t*r + r, L)): a final partial group averages only
    the tokens that exist. With L % r == 0 this is `x.unflatten(-2, (-1, r)).mean(-2)`.
    One launch reads x once and writes all requested ratios.
    """
    return _mean_pool_fwd((x,), tuple(ratios))[0]


def mean_pool_kv(
    k: torch.Tensor, v: torch.Tensor, ratios: tuple[int, ...] = (2, 4, 8)
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """`mean_pool` of k and of v (same shape and dtype, any strides) in one launch:
    (k's pools, v's pools), each a tuple over `ratios`."""
    pk, pv = _mean_pool_fwd((k, v), tuple(ratios))
    return pk, pv
