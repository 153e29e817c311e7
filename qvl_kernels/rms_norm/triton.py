"""Triton RMSNorm: one program per row reads x (and the residual) once and writes y (and
x + residual), rounding where eager PyTorch rounds."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._device import interpreting
from .naive import _check

MAX_N = 16384  # one row lives in registers


@triton.jit
def _rms_norm_fwd_kernel(
    X,
    R,
    W,
    Y,
    H,
    s_xm,
    s_rm,
    s_ym,
    s_hm,
    N,
    eps,
    BN: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    i_m = tl.program_id(0).to(tl.int64)
    o_n = tl.arange(0, BN)
    m_n = o_n < N
    # [BN] in x's dtype: h = x + residual rounded to x's dtype, as eager addition is
    b_h = tl.load(X + i_m * s_xm + o_n, mask=m_n, other=0.0)
    if HAS_RESIDUAL:
        b_r = tl.load(R + i_m * s_rm + o_n, mask=m_n, other=0.0)
        b_h = (b_h.to(tl.float32) + b_r.to(tl.float32)).to(X.dtype.element_ty)
        tl.store(H + i_m * s_hm + o_n, b_h, mask=m_n)
    b_h32 = b_h.to(tl.float32)
    b_var = tl.sum(b_h32 * b_h32, axis=0) / N
    # [BN] normalized row rounded to x's dtype, then weight * it computed in fp32 and rounded once
    b_n = (b_h32 * tl.rsqrt(b_var + eps)).to(X.dtype.element_ty).to(tl.float32)
    b_w = tl.load(W + o_n, mask=m_n, other=0.0).to(tl.float32)
    tl.store(Y + i_m * s_ym + o_n, (b_w * b_n).to(Y.dtype.element_ty), mask=m_n)


def _rms_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    _check(x, weight, residual)
    if not x.is_cuda and not interpreting():
        raise ValueError(
            "rms_norm (Triton) runs on CUDA tensors (or under TRITON_INTERPRET=1); "
            "for CPU tensors use qvl_kernels.rms_norm.naive.rms_norm"
        )
    N = x.shape[-1]
    if N > MAX_N:
        raise ValueError(f"rms_norm keeps a row in registers: N must be <= {MAX_N}, got {N}")
    x2 = x.reshape(-1, N)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    r2 = None
    if residual is not None:
        r2 = residual.reshape(-1, N)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
    w = weight.contiguous()
    M = x2.shape[0]
    y = torch.empty(x.shape, device=x.device, dtype=torch.promote_types(weight.dtype, x.dtype))
    h = torch.empty(x.shape, device=x.device, dtype=x.dtype) if residual is not None else None
    if M == 0:
        return y, h
    y2 = y.view(-1, N)
    h2 = h.view(-1, N) if h is not None else y2
    BN = triton.next_power_of_2(N)
    # A memory-bound row op: warps by row size, as in Triton's layer-norm tutorial (no autotuning,
    # so the first call does not benchmark and CUDA-graph capture sees one plain launch).
    _rms_norm_fwd_kernel[(M,)](
        x2,
        r2 if r2 is not None else x2,
        w,
        y2,
        h2,
        x2.stride(0),
        r2.stride(0) if r2 is not None else 0,
        y2.stride(0),
        h2.stride(0),
        N,
        eps,
        BN=BN,
        HAS_RESIDUAL=residual is not None,
        num_warps=min(max(BN // 256, 1), 16),
    )
    return y, h


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dimension, as transformers' Qwen2RMSNorm computes it (definition:
    `naive.py`), with the residual add of the decoder layer fused in.

    x: [..., N], last dimension contiguous (other strides free: a non-viewable x is copied),
    fp32/fp16/bf16, N <= 16384. weight: [N], any float dtype. eps: the variance epsilon.
    residual: None (default) or [..., N] of x's shape and dtype.
    h = x + residual rounded to x's dtype (or x); y = weight * (h * rsqrt(mean(h^2) + eps)) with
    fp32 statistics, the normalized row rounded to x's dtype and the final product computed in fp32
    and rounded once to the promoted dtype of weight and x, as eager PyTorch does.
    Returns y: [..., N] contiguous, or (y, h) with h: [..., N] in x's dtype when residual is given.

    The sum of squares is reduced in a different order than torch's, so y can differ from eager
    by one ulp of the normalized value where its rounding is a near tie; h and the rounding of
    the final product match eager exactly.
    """
    y, h = _rms_norm_fwd(x, weight, eps, residual)
    return y if residual is None else (y, h)
