"""Triton rotary position embedding: one program per (token, block of heads) reads both halves of
each head once and writes the rotated head; q and k can share one launch (`rotary_qk`)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._device import interpreting
from .naive import _check


@triton.jit
def _rotary_rows(
    X,
    Y,
    C,
    S,
    s_xt,
    s_xh,
    s_yt,
    s_yh,
    s_ct,
    s_st,
    i_t,
    i_h,
    H,
    D2: tl.constexpr,
    BH: tl.constexpr,
    BD: tl.constexpr,
    FP32_MATH: tl.constexpr,
):
    o_h = i_h * BH + tl.arange(0, BH)
    o_d = tl.arange(0, BD)
    m_d = o_d < D2
    m_hd = (o_h < H)[:, None] & m_d[None, :]
    # [BH, BD] first (x1) and second (x2) half of BH heads of token i_t
    p_x = X + i_t * s_xt + o_h[:, None].to(tl.int64) * s_xh + o_d[None, :]
    b_x1 = tl.load(p_x, mask=m_hd, other=0.0).to(tl.float32)
    b_x2 = tl.load(p_x + D2, mask=m_hd, other=0.0).to(tl.float32)
    # [1, BD] halves of cos and sin of token i_t
    p_c = C + i_t * s_ct + o_d[None, :]
    p_s = S + i_t * s_st + o_d[None, :]
    b_c1 = tl.load(p_c, mask=m_d[None, :], other=0.0).to(tl.float32)
    b_c2 = tl.load(p_c + D2, mask=m_d[None, :], other=0.0).to(tl.float32)
    b_s1 = tl.load(p_s, mask=m_d[None, :], other=0.0).to(tl.float32)
    b_s2 = tl.load(p_s + D2, mask=m_d[None, :], other=0.0).to(tl.float32)
    # rotate_half(x) = [-x2, x1]
    if FP32_MATH:
        b_y1 = b_x1 * b_c1 + (-b_x2) * b_s1
        b_y2 = b_x2 * b_c2 + b_x1 * b_s2
    else:
        # eager arithmetic in x's dtype: each product rounded, then the sum rounded again
        dt = X.dtype.element_ty
        b_y1 = (b_x1 * b_c1).to(dt).to(tl.float32) + ((-b_x2) * b_s1).to(dt).to(tl.float32)
        b_y2 = (b_x2 * b_c2).to(dt).to(tl.float32) + (b_x1 * b_s2).to(dt).to(tl.float32)
    p_y = Y + i_t * s_yt + o_h[:, None].to(tl.int64) * s_yh + o_d[None, :]
    tl.store(p_y, b_y1.to(Y.dtype.element_ty), mask=m_hd)
    tl.store(p_y + D2, b_y2.to(Y.dtype.element_ty), mask=m_hd)


@triton.jit
def _rotary_fwd_kernel(
    X0,
    Y0,
    s0_xt,
    s0_xh,
    s0_yt,
    s0_yh,
    H0,
    X1,
    Y1,
    s1_xt,
    s1_xh,
    s1_yt,
    s1_yh,
    H1,
    C,
    S,
    s_ct,
    s_st,
    D2: tl.constexpr,
    BH: tl.constexpr,
    BD: tl.constexpr,
    FP32_MATH: tl.constexpr,
):
    # Grid (T, head blocks, inputs): input 0 (q), and input 1 (k) when both share the launch.
    i_t, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1)
    if tl.program_id(2) == 0:
        _rotary_rows(X0, Y0, C, S, s0_xt, s0_xh, s0_yt, s0_yh, s_ct, s_st, i_t, i_h, H0, D2, BH, BD, FP32_MATH)
    else:
        _rotary_rows(X1, Y1, C, S, s1_xt, s1_xh, s1_yt, s1_yh, s_ct, s_st, i_t, i_h, H1, D2, BH, BD, FP32_MATH)


def _rotary_fwd(
    xs: tuple[torch.Tensor, ...],
    cos: torch.Tensor,
    sin: torch.Tensor,
    fp32_math: bool,
    outs: tuple[torch.Tensor | None, ...],
) -> list[torch.Tensor]:
    if len(xs) == 2 and xs[0].shape[::2] != xs[1].shape[::2]:
        raise ValueError(f"q and k must share T and D, got {tuple(xs[0].shape)} and {tuple(xs[1].shape)}")
    if len(xs) == 2 and xs[0].dtype != xs[1].dtype:
        raise ValueError(f"q and k must share a dtype, got {xs[0].dtype} and {xs[1].dtype}")
    for x, o in zip(xs, outs):
        _check(x, cos, sin, fp32_math, o)
        if not x.is_cuda and not interpreting():
            raise ValueError(
                "rotary (Triton) runs on CUDA tensors (or under TRITON_INTERPRET=1); "
                "for CPU tensors use qvl_kernels.rotary.naive"
            )
        for name, t in (("x", x), ("out", o)):
            if t is not None and t.stride(-1) != 1:
                raise ValueError(f"{name} must have a contiguous last dimension, got strides {t.stride()}")
    T, _, D = xs[0].shape
    # [T, D] views with stride 0 over T for a broadcast [1, D]; a strided last dimension is copied
    cos, sin = (t if t.stride(-1) == 1 else t.contiguous() for t in (cos, sin))
    cos, sin = cos.expand(T, D), sin.expand(T, D)
    ys = [o if o is not None else torch.empty(x.shape, device=x.device, dtype=x.dtype) for x, o in zip(xs, outs)]
    if T == 0:
        return ys
    BD = triton.next_power_of_2(D // 2)
    H_max = max(x.shape[1] for x in xs)
    BH = min(triton.next_power_of_2(H_max), max(1, 2048 // BD))
    args = []
    for i in (0, 1):  # the kernel's two input slots; with one input the second repeats it (grid z = 1: unread)
        x, y = xs[min(i, len(xs) - 1)], ys[min(i, len(xs) - 1)]
        args += [x, y, x.stride(0), x.stride(1), y.stride(0), y.stride(1), x.shape[1]]
    grid = (T, triton.cdiv(H_max, BH), len(xs))
    _rotary_fwd_kernel[grid](
        *args,
        cos,
        sin,
        cos.stride(0),
        sin.stride(0),
        D2=D // 2,
        BH=BH,
        BD=BD,
        FP32_MATH=fp32_math,
        num_warps=4,
        # eager PyTorch rounds x * cos before adding rotate_half(x) * sin: no fused multiply-add
        enable_fp_fusion=False,
    )
    return ys


def rotary(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    fp32_math: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotary position embedding `x * cos + rotate_half(x) * sin` (definition: `naive.py`).

    x: [T, H, D], D even, fp32/fp16/bf16, last dimension contiguous and any strides over T and H
    (e.g. q = qkv.view(T, 3, H, D)[:, 0]). cos, sin: [T, D] or [1, D] (broadcast over tokens),
    any strides. rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2]).
    fp32_math: True (default; transformers' vision tower): math in fp32 from fp32-converted x, cos
    and sin, rounded once to x's dtype. False (text model): cos and sin in x's dtype and eager
    rounding: each product rounded to x's dtype, then the sum. Both without fused multiply-adds,
    so results match eager PyTorch bit for bit.
    out: None (default: a new contiguous [T, H, D]) or a [T, H, D] tensor of x's dtype with a
    contiguous last dimension to write into; out=x rotates in place.
    Returns y: [T, H, D] in x's dtype.
    """
    return _rotary_fwd((x,), cos, sin, fp32_math, (out,))[0]


def rotary_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    fp32_math: bool = True,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rotary` of q and of k in one launch, sharing cos and sin.

    q: [T, H, D]; k: [T, HK, D] (HK may differ from H), same dtype, each with a contiguous last
    dimension and any other strides (views of one fused qkv buffer work). cos, sin: [T, D] or
    [1, D]. fp32_math as in `rotary`. out: None or (q_out, k_out) to write into (out=(q, k) in place).
    Returns (q_embed: [T, H, D], k_embed: [T, HK, D]).
    """
    oq, ok = out if out is not None else (None, None)
    yq, yk = _rotary_fwd((q, k), cos, sin, fp32_math, (oq, ok))
    return yq, yk
