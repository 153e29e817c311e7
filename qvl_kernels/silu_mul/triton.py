"""Triton silu(gate) * up: one pass over gate and up (two tensors or the two halves of one fused
gate_up projection), rounding where eager PyTorch rounds."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .._device import interpreting
from .naive import _check


@triton.jit
def _silu_mul_fwd_kernel(
    G,
    U,
    Y,
    s_gm,
    s_um,
    s_ym,
    I,
    BI: tl.constexpr,
    LIBDEVICE: tl.constexpr,
):
    i_m, i_i = tl.program_id(0).to(tl.int64), tl.program_id(1)
    o_i = i_i * BI + tl.arange(0, BI)
    m_i = o_i < I
    b_g = tl.load(G + i_m * s_gm + o_i, mask=m_i, other=0.0).to(tl.float32)  # [BI]
    b_u = tl.load(U + i_m * s_um + o_i, mask=m_i, other=0.0).to(tl.float32)  # [BI]
    # silu as torch computes it, g / (1 + exp(-g)), with CUDA's expf and an IEEE division (tl.exp
    # and `/` are approximate on GPUs); the interpreter has no libdevice and uses numpy's exp.
    if LIBDEVICE:
        b_e = libdevice.exp(-b_g)
    else:
        b_e = tl.exp(-b_g)
    b_s = tl.math.div_rn(b_g, 1.0 + b_e).to(Y.dtype.element_ty).to(tl.float32)
    tl.store(Y + i_m * s_ym + o_i, (b_s * b_u).to(Y.dtype.element_ty), mask=m_i)


def _rows(out: torch.Tensor, I: int) -> torch.Tensor:
    # [M, I] as a view of `out`, the kernel's writes landing in it
    try:
        rows = out.view(-1, I)
    except RuntimeError:
        rows = None
    if rows is None or rows.stride(-1) != 1:
        raise ValueError(
            f"out's rows must be viewable as [M, {I}] with a contiguous last dimension, got strides {out.stride()}"
        )
    return rows


def _flat(t: torch.Tensor, I: int) -> torch.Tensor:
    # [M, I] with a contiguous last dimension: a view where the strides allow it (halves of a
    # fused [..., 2I] buffer are), a copy otherwise
    t2 = t.reshape(-1, I)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def silu_mul(gate: torch.Tensor, up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """F.silu(gate) * up with eager rounding (definition: `naive.py`).

    gate, up: [..., I] of one shape and dtype (fp32/fp16/bf16), any strides; rows are read as views
    where possible, so the halves of a fused projection work without a copy:
    `silu_mul(*gate_up.chunk(2, -1))` for gate_up: [..., 2I] = cat([gate, up], -1).
    silu(g) = g / (1 + exp(-g)) is computed in fp32 and rounded to the dtype, then multiplied by up
    in fp32 and rounded again, as eager F.silu(gate) * up does.
    out: where y goes, gate's shape and dtype, its rows viewable as [M, I] with a contiguous last
    dimension (a half of a fused buffer is); it may be gate itself (each element is read before it
    is written), which saves a gated MLP its third activation buffer.
    Returns y: [..., I] in the inputs' dtype: `out` when given, else a new contiguous tensor.
    """
    _check(gate, up, out)
    if not gate.is_cuda and not interpreting():
        raise ValueError(
            "silu_mul (Triton) runs on CUDA tensors (or under TRITON_INTERPRET=1); "
            "for CPU tensors use qvl_kernels.silu_mul.naive.silu_mul"
        )
    I = gate.shape[-1]
    y = torch.empty(gate.shape, device=gate.device, dtype=gate.dtype) if out is None else out
    if y.numel() == 0:
        return y
    y2 = _rows(y, I)
    g2, u2 = _flat(gate, I), _flat(up, I)
    BI = min(triton.next_power_of_2(I), 2048)
    grid = (g2.shape[0], triton.cdiv(I, BI))
    _silu_mul_fwd_kernel[grid](
        g2,
        u2,
        y2,
        g2.stride(0),
        u2.stride(0),
        y2.stride(0),
        I,
        BI=BI,
        LIBDEVICE=not interpreting(),
        num_warps=4,
    )
    return y
