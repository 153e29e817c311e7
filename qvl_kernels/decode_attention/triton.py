"""Triton decode attention over a static KV cache: flash-decoding, split over the keys.

The definition is in naive.py. Two launches, no host sync and a grid fixed by the cache
capacity S (not by `length`), so a call can be captured in a CUDA graph and replayed as the
lengths grow in place:

1. `_decode_split_kernel`, grid (B * HKV, NS) with NS = cdiv(S, SPLIT): the program for
   (b, kv head h, split j) reads keys [j * SPLIT, min(j * SPLIT + SPLIT, length[b])) of K and V
   once, for all G query heads of h together (query rows padded to G_PAD >= 16 so the scores
   are one tl.dot), and writes per query head the partial max m_j (log2 units, scale folded
   in), sum l_j = sum exp2(s - m_j) and un-normalised output o_j = sum exp2(s - m_j) v.
   A split that starts at or past length[b] loads nothing and writes nothing.
2. `_decode_combine_kernel`, grid (B * HQ,): reads only the n = cdiv(length[b], SPLIT) splits
   that were written, and returns sum_j w_j o_j / sum_j w_j l_j with w_j = exp2(m_j - max_j m_j).
   Every written split holds at least one key, so every m_j read is finite.

Slots at or past length[b] are masked out of every load (never multiplied by zero: 0 * NaN is
NaN), so the cache tail may hold anything.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._device import interpreting, sm_count
from .._dot import dot
from .naive import check_args

BLOCK_N = 64  # keys per tile inside a split
MAX_SPLIT = 512
MIN_SPLIT = 128
_INTERPRETER_SMS = 132  # the split heuristic under the interpreter: as on an H100


@triton.jit
def _decode_split_kernel(
    Q,
    K,
    V,
    LEN,
    M_P,
    L_P,
    O_P,
    s_qb,
    s_qh,
    s_qd,
    s_kb,
    s_kh,
    s_kn,
    s_vb,
    s_vh,
    s_vn,
    HKV,
    S,
    NS,
    SPLIT,
    qk_scale,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BN: tl.constexpr,
):
    i_bh, i_s = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // HKV, i_bh % HKV
    n_len = tl.minimum(tl.maximum(tl.load(LEN + i_b).to(tl.int32), 0), S)
    i_start = i_s * SPLIT
    i_end = tl.minimum(i_start + SPLIT, n_len)

    o_g = tl.arange(0, G_PAD)
    m_g = o_g < G
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    o_n = tl.arange(0, BN)
    o_hq = i_h * G + o_g  # [G_PAD] query heads of kv head i_h

    p_q = Q + i_b.to(tl.int64) * s_qb + o_hq[:, None].to(tl.int64) * s_qh + o_d[None, :] * s_qd
    b_q = tl.load(p_q, mask=m_g[:, None] & m_d[None, :], other=0.0)  # [G_PAD, BD]
    p_k0 = K + i_b.to(tl.int64) * s_kb + i_h.to(tl.int64) * s_kh
    p_v0 = V + i_b.to(tl.int64) * s_vb + i_h.to(tl.int64) * s_vh

    b_m = tl.full([G_PAD], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([G_PAD], dtype=tl.float32)
    b_acc = tl.zeros([G_PAD, BD], dtype=tl.float32)
    for i_n in range(i_start, i_end, BN):
        o_t = i_n + o_n  # [BN]
        m_t = o_t < i_end
        m_kv = m_t[:, None] & m_d[None, :]
        b_k = tl.load(p_k0 + o_t[:, None].to(tl.int64) * s_kn + o_d[None, :], mask=m_kv, other=0.0)  # [BN, BD]
        b_v = tl.load(p_v0 + o_t[:, None].to(tl.int64) * s_vn + o_d[None, :], mask=m_kv, other=0.0)  # [BN, BD]
        b_s = dot(b_q, tl.trans(b_k), tl.zeros([G_PAD, BN], dtype=tl.float32))  # [G_PAD, BN]
        b_s = tl.where(m_t[None, :], b_s * qk_scale, float("-inf"))
        # The first tile of a split holds at least one key, so b_m_new is finite from then on.
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_p = tl.math.exp2(b_s - b_m_new[:, None])  # [G_PAD, BN]
        b_alpha = tl.math.exp2(b_m - b_m_new)
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_acc = dot(b_p.to(b_v.dtype), b_v, b_acc * b_alpha[:, None])  # [G_PAD, BD]
        b_m = b_m_new

    m_w = m_g & (i_start < n_len)  # a split past the length writes nothing; the combine skips it
    o_row = (i_b * HKV * G + o_hq).to(tl.int64) * NS + i_s  # [G_PAD] rows of [B * HQ, NS]
    tl.store(M_P + o_row, b_m, mask=m_w)
    tl.store(L_P + o_row, b_l, mask=m_w)
    tl.store(O_P + o_row[:, None] * D + o_d[None, :], b_acc, mask=m_w[:, None] & m_d[None, :])


@triton.jit
def _decode_combine_kernel(
    LEN,
    M_P,
    L_P,
    O_P,
    O,
    s_ob,
    s_oh,
    HQ,
    S,
    NS,
    SPLIT,
    D: tl.constexpr,
    BD: tl.constexpr,
    BNS: tl.constexpr,
):
    i_bh = tl.program_id(0)
    i_b, i_hq = i_bh // HQ, i_bh % HQ
    n_len = tl.minimum(tl.maximum(tl.load(LEN + i_b).to(tl.int32), 0), S)
    n_split = (n_len + SPLIT - 1) // SPLIT  # the splits pass 1 wrote
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    o_s = tl.arange(0, BNS)
    p_m = M_P + i_bh.to(tl.int64) * NS
    p_l = L_P + i_bh.to(tl.int64) * NS
    p_o = O_P + i_bh.to(tl.int64) * NS * D

    b_mx = tl.full([BNS], float("-inf"), dtype=tl.float32)
    for i_c in range(0, n_split, BNS):
        b_mx = tl.maximum(b_mx, tl.load(p_m + i_c + o_s, mask=i_c + o_s < n_split, other=float("-inf")))
    b_mmax = tl.max(b_mx, 0)

    b_l = tl.zeros([BNS], dtype=tl.float32)
    b_o = tl.zeros([BD], dtype=tl.float32)
    for i_c in range(0, n_split, BNS):
        o_c = i_c + o_s  # [BNS]
        m_c = o_c < n_split
        b_mp = tl.load(p_m + o_c, mask=m_c, other=float("-inf"))
        b_w = tl.where(m_c, tl.math.exp2(b_mp - b_mmax), 0.0)  # [BNS]
        b_l += b_w * tl.load(p_l + o_c, mask=m_c, other=0.0)
        b_op = tl.load(p_o + o_c[:, None].to(tl.int64) * D + o_d[None, :], mask=m_c[:, None] & m_d[None, :], other=0.0)
        b_o += tl.sum(b_w[:, None] * b_op, 0)  # [BD]
    b_lsum = tl.sum(b_l, 0)
    b_o = b_o / tl.where(b_lsum > 0, b_lsum, 1.0)  # length 0: no split, output 0
    p_out = O + i_b.to(tl.int64) * s_ob + i_hq.to(tl.int64) * s_oh + o_d
    tl.store(p_out, b_o.to(O.dtype.element_ty), mask=m_d)


def split_size(B: int, HKV: int, S: int, n_sm: int) -> int:
    """Keys per split: the largest power of two in [MIN_SPLIT, MAX_SPLIT] that still gives
    B * HKV * cdiv(S, split) >= 2 programs per SM (MIN_SPLIT when none does).

    A function of shapes only, so the grid of a captured graph never changes. Larger splits
    write fewer fp32 partials (G * D * 4 bytes per split and KV head, against 4 * D * split
    bytes of bf16 K and V read: ~5% extra traffic at 128, ~1.4% at 512); smaller ones fill
    more SMs. Qwen2.5-VL-7B (B=1, HKV=4) on 132 SMs: 128 up to 16K (256 programs at 8K),
    256 at 32K, 512 from 64K.
    """
    split = MAX_SPLIT
    while split > MIN_SPLIT and B * HKV * triton.cdiv(S, split) < 2 * n_sm:
        split //= 2
    return split


def _decode_attention_fwd(q, k_cache, v_cache, length, scale, block_split):
    check_args(q, k_cache, v_cache, length)
    if not q.is_cuda and not interpreting():
        raise ValueError(
            "the Triton decode_attention runs on CUDA tensors (or under TRITON_INTERPRET=1); "
            "for CPU tensors use qvl_kernels.decode_attention.naive.decode_attention"
        )
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache need a unit stride on D (any strides elsewhere)")
    B, HQ, D = q.shape
    _, HKV, S, _ = k_cache.shape
    G = HQ // HKV
    if D > 256:
        raise ValueError(f"head_dim up to 256 is supported, got {D}")
    if block_split is None:
        block_split = split_size(B, HKV, S, sm_count(q.device) if q.is_cuda else _INTERPRETER_SMS)
    if block_split < 1:
        raise ValueError(f"block_split must be >= 1, got {block_split}")
    scale = D**-0.5 if scale is None else float(scale)
    NS = triton.cdiv(S, block_split)
    BD = triton.next_power_of_2(D)

    # Partials: one row per (b, query head), one column per split; rows of unused splits stay
    # unwritten and unread.
    m_p = torch.empty(B * HQ, NS, device=q.device, dtype=torch.float32)
    l_p = torch.empty(B * HQ, NS, device=q.device, dtype=torch.float32)
    o_p = torch.empty(B * HQ, NS, D, device=q.device, dtype=torch.float32)
    out = torch.empty(B, HQ, D, device=q.device, dtype=q.dtype)

    _decode_split_kernel[(B * HKV, NS)](
        q,
        k_cache,
        v_cache,
        length,
        m_p,
        l_p,
        o_p,
        *q.stride(),
        *k_cache.stride()[:3],
        *v_cache.stride()[:3],
        HKV,
        S,
        NS,
        block_split,
        scale * math.log2(math.e),
        G=G,
        G_PAD=max(16, triton.next_power_of_2(G)),
        D=D,
        BD=BD,
        BN=BLOCK_N,
        num_warps=4,
        num_stages=2,
    )
    _decode_combine_kernel[(B * HQ,)](
        length,
        m_p,
        l_p,
        o_p,
        out,
        out.stride(0),
        out.stride(1),
        HQ,
        S,
        NS,
        block_split,
        D=D,
        BD=BD,
        BNS=32,
        num_warps=4,
    )
    return out


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    length: torch.Tensor,
    scale: float | None = None,
    *,
    block_split: int | None = None,
) -> torch.Tensor:
    """Attention of one new token per sequence over the first `length[b]` slots of a static cache.

    q: [B, HQ, D], any strides. k_cache, v_cache: [B, HKV, S, D], S the capacity, any strides
    with stride(-1) == 1 (e.g. `keys[i].unsqueeze(0)` of a [layers, HKV, S, D] buffer); HQ is a
    multiple of HKV and query head h reads KV head h // (HQ // HKV) in place. D <= 256 (64, 80,
    128 tested; padded to a power of two). fp32, fp16 or bf16, one dtype for all three.
    length: [B] int32/int64 on q's device; slots at or past length[b] are never read (they may
    hold NaN). A length above S counts as S; 0 gives a zero output.
    scale: D ** -0.5 by default.
    block_split: keys per split, None for `split_size` (a function of B, HKV, S and the SM count).
    Returns [B, HQ, D] contiguous, in q's dtype; softmax and accumulation in fp32.
    No host synchronisation and a grid fixed by the shapes: safe inside CUDA graph capture.
    """
    return _decode_attention_fwd(q, k_cache, v_cache, length, scale, block_split)
