"""Triton block importance: fused antidiagonal (xattn) scoring with a single matmul pass.

Cost model. With stride s the xattn scores are an (L/s x L/s) causal matmul over s*D values per
query head: L^2 D / s multiply-adds, 1/(2s) of dense causal attention's FLOPs (6.25 % at s = 8).
A textbook two-pass softmax (pass 1: row max and sum, pass 2: recompute and normalize) doubles
that to 12.5 %, over the 8 % budget, so the kernel does the matmul once:

- pass 1, over key tiles of one tile of strided query rows: scores in registers, online row max m
  and row sum l (base 2), and for every (strided row, key block) pair the log-sum-exp of the
  row's scores inside that key block, lse[r, J] = m_tile + log2(sum exp2(x - m_tile)), written to
  a scratch buffer [rows, nb] (fp32, one value per row and key block: block / s times smaller
  than the score matrix, and never the L/s x L/s matrix itself).
- pass 2, after the row's total LSE = m + log2(l) is known: P[r, J] = exp2(lse[r, J] - LSE[r]) is
  the exact softmax mass of row r in key block J; rows are summed into their query block.

The scratch is only read back by the program that wrote it, right after writing it (mostly from
L2). The launcher walks the strided query rows in chunks so the scratch stays under
`SCRATCH_BYTES` (256 MiB) at any sequence length; within a chunk one launch covers all heads.

The pooling method (mean-pool per block, then an nb x nb softmax) costs one read of q and k and
an (nb x nb) matmul per head; it is plain PyTorch here (a reduction and one batched GEMM with
GQA as a view, no copy of K).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .naive import _block_mean, check_args

SCRATCH_BYTES = 256 * 2**20
ROW_ALIGN = 256  # rows per chunk are a multiple of this: every BM and R = block / stride divide it
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# (BM, BN, num_warps, num_stages, FLAT). Compiled for sm_90 without a GPU (triton 3.8): all use
# wgmma with cp.async pipelining and no spills; FLAT keeps the pipeline full across key tiles and
# needs fewer registers (128x128: 152 vs 204). The nested-loop variant stays as a candidate.
_GPU_CONFIGS = [
    (64, 64, 4, 3, True), (64, 128, 4, 3, True), (128, 64, 8, 3, True),
    (128, 128, 8, 2, True), (128, 128, 8, 3, True),
    (64, 128, 4, 3, False), (128, 128, 8, 3, False),
]
INTERPRET_FLAT = True  # the interpreter runs one config: tests flip this to cover both loops


def _configs():
    if _INTERPRET:  # few, large numpy ops are fastest
        raw = [(bm, bn, 4, 1, flat) for flat in (True, False) for bm in (16, 32) for bn in (16, 32)]
    else:
        raw = _GPU_CONFIGS
    return [triton.Config({"BM": bm, "BN": bn, "FLAT": flat}, num_warps=w, num_stages=st)
            for bm, bn, w, st, flat in raw]


def _keep(conf: triton.Config, R: int) -> bool:
    # Query and key tiles hold whole blocks of R = block / stride strided rows.
    return conf.kwargs["BM"] % R == 0 and conf.kwargs["BN"] % R == 0


def _prune(configs, named_args, **kwargs):
    R = named_args["R"] if "R" in named_args else kwargs["R"]
    kept = [c for c in configs if _keep(c, R)]
    if not kept:  # R larger than every tile: one tile per block
        kept = [triton.Config({"BM": R, "BN": R, "FLAT": True}, num_warps=8 if R >= 128 else 4, num_stages=2)]
    if _INTERPRET:
        kept = [c for c in kept if c.kwargs["FLAT"] == INTERPRET_FLAT] or kept
        return kept[-1:]
    return kept


@triton.jit
def _antidiag_dot(b_s, p_q, p_k, s_ql, s_kl, o_m, t0, j, L, o_d, m_d,
                  STRIDE: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr):
    # b_s [BM, BN] += scores of query offset s-1-j against key offset j (one antidiagonal step)
    o_tq = o_m * STRIDE + (STRIDE - 1 - j)
    o_tk = (t0 + tl.arange(0, BN)) * STRIDE + j
    b_q = tl.load(p_q + o_tq.to(tl.int64)[:, None] * s_ql + o_d[None, :],
                  mask=(o_tq < L)[:, None] & m_d[None, :], other=0.0)  # [BM, BD]
    b_k = tl.load(p_k + o_tk.to(tl.int64)[None, :] * s_kl + o_d[:, None],
                  mask=(o_tk < L)[None, :] & m_d[:, None], other=0.0)  # [BD, BN]
    if IEEE:  # fp32 inputs: full-precision products (tests, references)
        b_s += tl.dot(b_q, b_k, input_precision="ieee")
    else:
        b_s += tl.dot(b_q, b_k)
    return b_s


@triton.jit
def _tile_lse(b_s, m_i, l_i, p_lse, o_m, m_m, t0, LS, NB, scale,
              CAUSAL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, R: tl.constexpr):
    # Online row max/sum over one key tile; stores the per-(row, key block) log-sum-exp.
    NJ: tl.constexpr = BN // R  # key blocks per key tile
    o_n = t0 + tl.arange(0, BN)  # strided key rows
    b_s = b_s * scale  # base-2 logits
    m_s = (o_n < LS)[None, :]
    if CAUSAL:
        m_s = m_s & (o_n[None, :] <= o_m[:, None])
    b_s = tl.where(m_s, b_s, float("-inf"))  # [BM, BN]
    # key row 0 is visible to every row, so m_new is finite from the first tile on
    m_new = tl.maximum(m_i, tl.max(b_s, 1))
    b_p = tl.exp2(b_s - m_new[:, None])  # [BM, BN]
    l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(b_p, 1)
    b_bs = tl.sum(tl.reshape(b_p, [BM, NJ, R]), 2)  # [BM, NJ]
    b_lse = m_new[:, None] + tl.log2(b_bs)  # -inf where the block holds no visible key
    o_j = t0 // R + tl.arange(0, NJ)
    tl.store(p_lse + o_j[None, :], b_lse, mask=m_m[:, None] & (o_j < NB)[None, :])
    return m_new, l_i


@triton.autotune(
    configs=_configs(),
    key=["D", "STRIDE", "R", "CAUSAL", "IEEE", "L_BUCKET"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit(do_not_specialize=["L_BUCKET"])
def _xattn_kernel(
    q, k, lse, out,
    s_qb, s_qh, s_ql,
    s_kb, s_kh, s_kl,
    scale,
    L, LS, NB, row0, CH, HQ, G,
    L_BUCKET,
    D: tl.constexpr,
    BD: tl.constexpr,
    STRIDE: tl.constexpr,
    R: tl.constexpr,
    CAUSAL: tl.constexpr,
    IEEE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    FLAT: tl.constexpr,
):
    # Grid: (row tiles of this chunk, B * HQ). Heaviest (latest) row tiles start first.
    i_m = tl.num_programs(0) - 1 - tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b, i_h = i_bh // HQ, i_bh % HQ
    i_hk = i_h // G
    NJ: tl.constexpr = BN // R  # key blocks per key tile

    o_m = row0 + i_m * BM + tl.arange(0, BM)  # strided query rows
    row_end = tl.minimum(LS, row0 + CH)  # rows of this chunk (a tile never spills into the next)
    m_m = o_m < row_end
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    p_q = q + i_b.to(tl.int64) * s_qb + i_h.to(tl.int64) * s_qh
    p_k = k + i_b.to(tl.int64) * s_kb + i_hk.to(tl.int64) * s_kh
    p_lse = lse + i_bh.to(tl.int64) * CH * NB + (o_m - row0).to(tl.int64)[:, None] * NB  # [BM, 1]

    if CAUSAL:
        hi = tl.minimum(LS, row0 + (i_m + 1) * BM)
    else:
        hi = LS

    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    if FLAT:
        # One flat loop over (key tile, stride offset): the load pipeline runs across key tiles
        # instead of draining every STRIDE steps (the persistent-matmul pattern).
        b_s = tl.zeros([BM, BN], dtype=tl.float32)
        for it in range(0, tl.cdiv(hi, BN) * STRIDE):
            j = it % STRIDE
            t0 = (it // STRIDE) * BN
            b_s = _antidiag_dot(b_s, p_q, p_k, s_ql, s_kl, o_m, t0, j, L, o_d, m_d, STRIDE, BN, IEEE)
            if j == STRIDE - 1:
                m_i, l_i = _tile_lse(b_s, m_i, l_i, p_lse, o_m, m_m, t0, LS, NB, scale, CAUSAL, BM, BN, R)
                b_s = tl.zeros([BM, BN], dtype=tl.float32)
    else:
        for t0 in range(0, hi, BN):
            b_s = tl.zeros([BM, BN], dtype=tl.float32)
            for j in range(STRIDE):
                b_s = _antidiag_dot(b_s, p_q, p_k, s_ql, s_kl, o_m, t0, j, L, o_d, m_d, STRIDE, BN, IEEE)
            m_i, l_i = _tile_lse(b_s, m_i, l_i, p_lse, o_m, m_m, t0, LS, NB, scale, CAUSAL, BM, BN, R)

    # pass 2: exact softmax mass per (row, key block), rows summed into query blocks. Pass 2 reads
    # scratch that other threads of this program wrote (another register layout): a CTA barrier
    # makes those global stores visible first.
    tl.debug_barrier()
    b_lse_row = m_i + tl.log2(l_i)  # [BM]
    o_i = (row0 + i_m * BM) // R + tl.arange(0, BM // R)  # query blocks
    p_out = out + i_bh.to(tl.int64) * NB * NB + o_i.to(tl.int64)[:, None] * NB  # [BM // R, 1]
    for j0 in range(0, NB, NJ):
        o_j = j0 + tl.arange(0, NJ)
        m_j = (o_j * R < hi) & (o_j < NB)
        b_lse = tl.load(p_lse + o_j[None, :], mask=m_m[:, None] & m_j[None, :], other=float("-inf"))
        b_p = tl.exp2(b_lse - b_lse_row[:, None])  # [BM, NJ]
        b_o = tl.sum(tl.reshape(b_p, [BM // R, R, NJ]), 1)  # [BM // R, NJ]
        tl.store(p_out + o_j[None, :], b_o, mask=(o_i * R < row_end)[:, None] & (o_j < NB)[None, :])


def _length_bucket(LS: int) -> int:
    """Coarse length class for the autotune key (0: < 256 strided rows ... 4: >= 2048, i.e. 16K
    tokens at stride 8), so a short first call does not pick the tiles for 64K. Not a kernel
    constant: changing it re-benchmarks, never recompiles."""
    return min(max(LS.bit_length() - 8, 0), 4)


def _xattn(q, k, block, stride, causal, out):
    if not q.is_cuda and not _INTERPRET:
        raise ValueError("block_importance(method='xattn') runs on CUDA tensors (or under TRITON_INTERPRET=1); "
                         "on the CPU use qvl_kernels.block_importance.naive.block_importance")
    B, HQ, L, D = q.shape
    HKV = k.shape[1]
    R = block // stride
    LS = triton.cdiv(L, stride)
    NB = triton.cdiv(L, block)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    # Strided query rows per chunk: a multiple of ROW_ALIGN, scratch under SCRATCH_BYTES.
    CH = max(ROW_ALIGN, SCRATCH_BYTES // (4 * B * HQ * NB) // ROW_ALIGN * ROW_ALIGN)
    CH = min(CH, triton.cdiv(LS, ROW_ALIGN) * ROW_ALIGN)
    lse = torch.empty(B * HQ * CH * NB, device=q.device, dtype=torch.float32)
    scale = math.log2(math.e) / (math.sqrt(D) * stride)
    for row0 in range(0, LS, CH):
        rows = min(CH, LS - row0)

        def grid(meta, rows=rows):
            return (triton.cdiv(rows, meta["BM"]), B * HQ)

        _xattn_kernel[grid](
            q, k, lse, out,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            scale,
            L, LS, NB, row0, CH, HQ, HQ // HKV,
            _length_bucket(LS),
            D=D, BD=triton.next_power_of_2(D),
            STRIDE=stride, R=R, CAUSAL=causal, IEEE=q.dtype == torch.float32,
        )
    return out


def _pooling(q, k, block, causal, out):
    B, HQ, L, D = q.shape
    HKV = k.shape[1]
    nb = out.shape[-1]
    qp = _block_mean(q, block).unflatten(1, (HKV, HQ // HKV)).flatten(2, 3)  # [B, HKV, G*nb, D]
    kp = _block_mean(k, block)  # [B, HKV, nb, D]
    s = (qp @ kp.transpose(-1, -2)).view(B, HQ, nb, nb) / math.sqrt(D)
    if causal:
        invisible = torch.ones(nb, nb, dtype=torch.bool, device=q.device).triu(1)
        s = s.masked_fill(invisible, float("-inf"))
    out.copy_(torch.softmax(s, dim=-1))
    return out


def block_importance(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block: int = 128,
    stride: int = 8,
    method: str = "xattn",
    causal: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Block importance S of PSA (see `naive.py` for the exact definition).

    q: [B, HQ, L, D]; k: [B, HKV, L, D], HQ = G * HKV, query head h reads KV head h // G (K is
    never copied per query head). Last dimension contiguous; other strides are free.
    block: tokens per block (128, a power of two >= 16); stride: xattn stride s (8, a power of
    two <= block); method: "xattn" (default) or "pooling"; causal: True.
    out: optional [B, HQ, nb, nb] fp32 contiguous output to write into.
    Returns S: [B, HQ, nb, nb] fp32, nb = ceil(L / block); rows sum to the number of strided rows
    of the query block (xattn) or to 1 (pooling); causally invisible entries are 0.
    Extra memory: at most SCRATCH_BYTES (256 MiB) of scratch, whatever L. No host sync.
    """
    B, HQ, HKV, L, D, nb = check_args(q, k, block, stride, method)
    if out is None:
        out = torch.empty(B, HQ, nb, nb, device=q.device, dtype=torch.float32)
    elif out.shape != (B, HQ, nb, nb) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous fp32 [{B}, {HQ}, {nb}, {nb}] tensor")
    if method == "pooling":
        return _pooling(q, k, block, causal, out)
    return _xattn(q, k, block, stride, causal, out)
