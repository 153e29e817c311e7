"""Triton similarity cap: one program per key block reads it once per level and writes the
three similarities and the cap (see `naive.py` for the definition).

Reads 1.75 x the keys in all (all of them at r = 2, half at r = 4, a quarter at r = 8): a few
tens of microseconds at 128K tokens on an H100, next to milliseconds for the importance.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .naive import EPS, check_args

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_EPS2 = tl.constexpr(EPS * EPS)  # jit code may read only constexpr globals


@triton.jit
def _pair_cos_mean(p_k, s_kl, o_c, L, o_d, m_d, R: tl.constexpr, BLOCK: tl.constexpr, NBLK: tl.constexpr):
    # Mean cosine of the pairs (g*R, g*R + R - 1) of each of the NBLK blocks starting at token o_c.
    NG: tl.constexpr = NBLK * BLOCK // R
    o_a = o_c + tl.arange(0, NG) * R  # first token of each pair
    m_p = (o_a + R - 1) < L  # both tokens inside the sequence
    m_2 = m_p[:, None] & m_d[None, :]
    b_a = tl.load(p_k + o_a.to(tl.int64)[:, None] * s_kl + o_d[None, :], mask=m_2, other=0.0).to(tl.float32)
    b_b = tl.load(p_k + (o_a + R - 1).to(tl.int64)[:, None] * s_kl + o_d[None, :], mask=m_2, other=0.0).to(tl.float32)
    b_dot = tl.sum(b_a * b_b, 1)  # [NG]
    b_nn = tl.sum(b_a * b_a, 1) * tl.sum(b_b * b_b, 1)
    b_cos = tl.where(m_p, b_dot / tl.sqrt(tl.maximum(b_nn, _EPS2)), 0.0)
    b_sum = tl.sum(tl.reshape(b_cos, [NBLK, BLOCK // R]), 1)  # [NBLK]
    b_cnt = tl.sum(tl.reshape(m_p.to(tl.float32), [NBLK, BLOCK // R]), 1)
    return b_sum / tl.maximum(b_cnt, 1.0), b_cnt


@triton.jit
def _similarity_kernel(
    k,
    sim,
    cap,
    s_kb,
    s_kh,
    s_kl,
    t2,
    t4,
    t8,
    L,
    NB,
    H,
    D: tl.constexpr,
    BD: tl.constexpr,
    BLOCK: tl.constexpr,
    NBLK: tl.constexpr,
):
    # Grid: (cdiv(NB, NBLK), B * H); NBLK key blocks per program.
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    p_k = k + i_b.to(tl.int64) * s_kb + i_h.to(tl.int64) * s_kh
    o_c = i_c * NBLK * BLOCK
    s2, n2 = _pair_cos_mean(p_k, s_kl, o_c, L, o_d, m_d, 2, BLOCK, NBLK)
    s4, n4 = _pair_cos_mean(p_k, s_kl, o_c, L, o_d, m_d, 4, BLOCK, NBLK)
    s8, n8 = _pair_cos_mean(p_k, s_kl, o_c, L, o_d, m_d, 8, BLOCK, NBLK)
    b_cap = tl.where((n2 > 0) & (s2 > t2), 2, 1)  # [NBLK]
    b_cap = tl.where((n4 > 0) & (s4 > t4), 4, b_cap)
    b_cap = tl.where((n8 > 0) & (s8 > t8), 8, b_cap)
    o_n = i_c * NBLK + tl.arange(0, NBLK)
    m_n = o_n < NB
    o_s = i_bh.to(tl.int64) * NB + o_n
    tl.store(sim + o_s * 3 + 0, s2, mask=m_n)
    tl.store(sim + o_s * 3 + 1, s4, mask=m_n)
    tl.store(sim + o_s * 3 + 2, s8, mask=m_n)
    tl.store(cap + o_s, b_cap.to(tl.int8), mask=m_n)


def _similarity(k, block, thresholds, sim=None, cap=None):
    B, H, L, D, nb = check_args(k, block, thresholds)
    if not k.is_cuda and not _INTERPRET:
        raise ValueError(
            "similarity_cap runs on CUDA tensors (or under TRITON_INTERPRET=1); "
            "on the CPU use qvl_kernels.similarity_cap.naive"
        )
    if k.stride(-1) != 1:
        k = k.contiguous()
    if sim is None:
        sim = torch.empty(B, H, nb, 3, device=k.device, dtype=torch.float32)
    if cap is None:
        cap = torch.empty(B, H, nb, device=k.device, dtype=torch.int8)
    BD = triton.next_power_of_2(D)
    # GPU: about 128 tokens per program (the r = 2 tiles are [64, BD]); the interpreter prefers
    # few programs with large numpy ops.
    NBLK = min(triton.next_power_of_2(nb), 32) if _INTERPRET else max(1, 128 // block)
    _similarity_kernel[(triton.cdiv(nb, NBLK), B * H)](
        k,
        sim,
        cap,
        k.stride(0),
        k.stride(1),
        k.stride(2),
        float(thresholds[0]),
        float(thresholds[1]),
        float(thresholds[2]),
        L,
        nb,
        H,
        D=D,
        BD=BD,
        BLOCK=block,
        NBLK=NBLK,
        num_warps=4 if BD <= 64 else 8,
    )
    return sim, cap


def _check_out(out, shape, dtype):
    if out is not None and (out.shape != shape or out.dtype != dtype or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous {dtype} tensor of shape {list(shape)}")


def block_similarity(k: torch.Tensor, *, block: int = 128, out: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cosine similarity of key pairs at distance 1, 3 and 7 per key block.

    k: [B, HKV, L, D] (last dimension contiguous); block: 128 (a power of two >= 16).
    Returns [B, HKV, nb, 3] fp32 for r = 2, 4, 8 (0 where a block has no complete pair).
    """
    B, H, L, D, nb = check_args(k, block, (0.0, 0.0, 0.0))
    _check_out(out, (B, H, nb, 3), torch.float32)
    sim, _ = _similarity(k, block, (0.0, 0.0, 0.0), sim=out)
    return sim


def similarity_cap(
    k: torch.Tensor,
    *,
    block: int = 128,
    thresholds: tuple[float, float, float] = (0.75, 0.70, 0.70),
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Coarsest pooling level each key block may use (PSA step 3, see `naive.py`).

    k: [B, HKV, L, D] (last dimension contiguous); block: 128; thresholds: (0.75, 0.70, 0.70)
    for levels 2, 4, 8 (strictly above passes). out: optional [B, HKV, nb] int8 to write into.
    Returns cap: [B, HKV, nb] int8 in {1, 2, 4, 8}, nb = ceil(L / block). One launch, no sync.
    """
    B, H, L, D, nb = check_args(k, block, thresholds)
    _check_out(out, (B, H, nb), torch.int8)
    _, cap = _similarity(k, block, thresholds, cap=out)
    return cap
