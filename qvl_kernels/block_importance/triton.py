"""Triton block importance: fused antidiagonal (xattn) scoring with a single matmul pass.

Cost model. With stride s the xattn scores are an (L/s x L/s) causal matmul over s*D values per
query head: L^2 D / s multiply-adds, 1/(2s) of dense causal attention's FLOPs (6.25 % at s = 8).
A textbook two-pass softmax (pass 1: row max and sum, pass 2: recompute and normalize) doubles
that to 12.5 %, over the 8 % budget, so the kernel does the matmul once:

- pass 1, over key tiles of one tile of strided query rows: scores in registers, online row max m
  and row sum l (base 2), and for every (strided row, key block) pair the log-sum-exp of the
  row's scores inside that key block, lse[r, J] = m_tile + log2(sum exp2(x - m_tile)), written to
  a scratch buffer [rows, nb] (fp32, one value per row and key block, then one LSE per row: block
  / s times smaller than the score matrix, and never the L/s x L/s matrix itself).
- pass 2, after the row's total LSE = m + log2(l) is known: P[r, J] = exp2(lse[r, J] - LSE[r]) is
  the exact softmax mass of row r in key block J; rows are summed into their query block. Each
  thread sums the rows of its own query block (no shuffles, no shared memory, no barriers), and
  only the key blocks the tile's rows see are read (a reduction over a reshaped tile instead
  loops over every key block with CTA barriers per step, which showed as a large share of the
  kernel's time).

The scratch is only read back by the program that wrote it, right after writing it (mostly from
L2). The launcher walks the strided query rows in chunks so the scratch stays under
`SCRATCH_BYTES` (512 MiB) at any sequence length; within a chunk one launch covers all heads.
Each chunk's launch ends in a tail of light programs, so fewer, larger chunks are faster: 512 MiB
covers 64K tokens of the 7B shape in one launch.

Loads. Step j of a key tile multiplies the query rows' token at offset s-1-j by the key rows'
token at offset j: a [BM, D] x [D, BN] product of rows s tokens apart, so each key tile is s
(x D / BK) GEMM steps and moves (BM + BN) * D values per step: BM * BN / (BM + BN) FLOP per byte
(64 for 128x128, 85 for 128x256), which keeps the kernel near the L2 bandwidth. Where the layout
allows (`_tma_layout_ok`), the loads are TMA copies from a 2-D view of each (batch, head): row r
of the view spans the s token rows of strided row r, so offset j, columns d0.. is the column
j * s_l + d0 (s_l: the token stride); otherwise masked pointer gathers. The view holds the full
strided rows only; with L % s != 0 the partial last row is zero there, and the tiles that need it
take the pointer path (compiled in only for such L: it costs registers).

fp8 (opt-in, `block_importance(..., fp8=True)`): `quantize.py` writes per-(batch, head)
float8_e4m3fn copies of q and k (two streaming passes, no host sync) and the same kernel runs on
them: q's scale per strided row and k's per head folded into each query row's score scale
(ROW_SCALE). Half the bytes per tile and twice the tensor-core rate (docs/benchmarks.md).

The pooling method (mean-pool per block, then an nb x nb softmax) costs one read of q and k and
an (nb x nb) matmul per head; it is plain PyTorch here (a reduction and one batched GEMM with
GQA as a view, no copy of K).
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

from .._autotune import autotune
from .._device import capability
from .._dot import dot
from .._tma import ensure_tma_allocator, tma_ok_whole
from .naive import _block_mean, check_args, check_fp8
from .quantize import quantize_fp8

SCRATCH_BYTES = 512 * 2**20  # 7B shape: one launch up to 64K tokens, four at 128K
ROW_ALIGN = 256  # rows per chunk are a multiple of this: every BM and R = block / stride divide it
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# (BM, BN, BK, num_warps, num_stages, FLAT): the launch classes (`_launch_class`) each config
# serves. BK: head-dim columns per load, at most BD; BK < BD splits each offset's step in BD / BK
# smaller ones. FLAT: one flat loop over (key tile, offset, column chunk), the pipeline full across
# key tiles (a nested-loop config was never the fastest at any length; the interpreter runs both).
# Chosen by the sweep of benchmarks/experiments/variants_importance.py (numbers: docs/benchmarks.md):
# 128x256 tiles with TMA are fastest from 16K tokens, bf16 and fp8 alike; pointer gathers gain
# nothing from other tiles.
# One config per class from 2048 strided rows up (launched directly, without the autotuner:
# `_only_config`): bf16/fp16 s3 at 2048-4095 strided rows (16K tokens at stride 8, L_BUCKET 4), s4
# from 4096 (L_BUCKET 5); fp8 128x256x128 s3 from 2048. Two configs below, where smaller tiles
# give more CTAs to fill the SMs (not measured below 16K: 128x128x64 s4 was the fastest 128x128
# tile at 16K; 64-row tiles double the CTAs). fp32 inputs (IEEE dots: tests, references) take two
# 2-stage tiles with 64-wide head-dim steps that fit shared memory in fp32. Registers (sm_90
# compile, D 128): 255 for the 128x256 tiles (TMA path, bf16 and fp8), no spills (60-72 bytes with
# a partial last strided row, which compiles in the pointer loop too).
_GPU_CONFIGS = {
    (128, 256, 64, 8, 4, True): ("tma-long",),
    (128, 256, 64, 8, 3, True): ("tma-mid",),
    (128, 256, 128, 8, 3, True): ("tma-fp8",),  # BK 128: 297 KB of shared memory in bf16
    (128, 128, 128, 8, 3, True): ("pointer-long", "pointer-short"),
    (128, 128, 64, 8, 4, True): ("tma-short",),
    (64, 128, 128, 4, 3, True): ("tma-short", "pointer-short"),
    # fp32: 4-byte tiles; the bf16 tiles above need 288-328 KB of shared memory in fp32 (measured:
    # OutOfResources on the H200), these 96-128 KB.
    (128, 128, 64, 8, 2, True): ("ieee",),
    (64, 128, 64, 4, 2, True): ("ieee",),
}
_MID_BUCKET = 4  # _length_bucket of 2048-4095 strided rows
_LONG_BUCKET = 5  # _length_bucket of >= 4096 strided rows
INTERPRET_FLAT = True  # the interpreter runs one config: tests flip this to cover both loops


def _configs():
    if _INTERPRET:  # few, large numpy ops are fastest
        raw = [(bm, bn, 128, 4, 1, flat) for flat in (True, False) for bm in (16, 32) for bn in (16, 32)]
    else:
        raw = list(_GPU_CONFIGS)
    return [
        triton.Config({"BM": bm, "BN": bn, "BK": bk, "FLAT": flat}, num_warps=w, num_stages=st)
        for bm, bn, bk, w, st, flat in raw
    ]


def _as_tuple(conf: triton.Config) -> tuple:
    kw = conf.kwargs
    return kw["BM"], kw["BN"], kw["BK"], conf.num_warps, conf.num_stages, kw["FLAT"]


def _launch_class(ieee: bool, tma: bool, bucket: int, fp8: bool = False) -> str:
    """Which configs of _GPU_CONFIGS a launch may use: "ieee", "tma-{short|mid|long|fp8}" or
    "pointer-{short|long}"."""
    if ieee:
        return "ieee"
    if bucket < _MID_BUCKET:
        return ("tma" if tma else "pointer") + "-short"
    if not tma:
        return "pointer-long"
    if fp8:
        return "tma-fp8"
    return "tma-long" if bucket >= _LONG_BUCKET else "tma-mid"


def _keep(conf: triton.Config, R: int) -> bool:
    # Query and key tiles hold whole blocks of R = block / stride strided rows.
    return conf.kwargs["BM"] % R == 0 and conf.kwargs["BN"] % R == 0


def _prune(configs, named_args, **kwargs):
    def arg(name):
        return named_args[name] if name in named_args else kwargs[name]

    R = arg("R")
    kept = [c for c in configs if _keep(c, R)]
    if not _INTERPRET:
        # ROW_SCALE: q and k are the fp8 copies of block_importance(fp8=True)
        cls = _launch_class(arg("IEEE"), arg("TMA"), arg("L_BUCKET"), arg("ROW_SCALE"))
        kept = [c for c in kept if cls in _GPU_CONFIGS.get(_as_tuple(c), ())]
    if not kept:  # R larger than every tile: one tile per block
        kept = [
            triton.Config({"BM": R, "BN": R, "BK": 128, "FLAT": True}, num_warps=8 if R >= 128 else 4, num_stages=2)
        ]
    if _INTERPRET:
        kept = [c for c in kept if c.kwargs["FLAT"] == INTERPRET_FLAT] or kept
        return kept[-1:]
    return kept


@triton.jit
def _load_qk(
    p_q,
    p_k,
    d_q,
    d_k,
    s_ql,
    s_kl,
    r0,
    t0,
    j,
    d0,
    L,
    D: tl.constexpr,
    STRIDE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    TMA: tl.constexpr,
):
    # Query rows r0.. at offset s-1-j and key rows t0.. at offset j, head-dim columns d0..d0+BK.
    if TMA:  # rows past the descriptors' end (the last full strided row) come back as zeros
        b_q = d_q.load([r0, (STRIDE - 1 - j) * s_ql + d0])  # [BM, BK]
        b_k = tl.trans(d_k.load([t0, j * s_kl + d0]))  # [BK, BN]
    else:
        o_d = d0 + tl.arange(0, BK)
        m_d = o_d < D
        o_tq = (r0 + tl.arange(0, BM)) * STRIDE + (STRIDE - 1 - j)
        o_tk = (t0 + tl.arange(0, BN)) * STRIDE + j
        b_q = tl.load(
            p_q + o_tq.to(tl.int64)[:, None] * s_ql + o_d[None, :], mask=(o_tq < L)[:, None] & m_d[None, :], other=0.0
        )  # [BM, BK]
        b_k = tl.load(
            p_k + o_tk.to(tl.int64)[None, :] * s_kl + o_d[:, None], mask=(o_tk < L)[None, :] & m_d[:, None], other=0.0
        )  # [BK, BN]
    return b_q, b_k


@triton.jit
def _log2(x, FAST: tl.constexpr):
    # libdevice's log2f is a ~20-instruction software routine (no MUFU.LG2 in the SASS); the
    # hardware approximation (relative error ~2^-22) is plenty for a log-sum-exp, and the
    # interpreter has no inline assembly.
    if FAST:
        return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)
    return tl.log2(x)


@triton.jit
def _tile_lse(
    b_s,
    m_i,
    l_i,
    p_lse,
    o_m,
    m_m,
    t0,
    LS,
    NB,
    scale,
    CAUSAL: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    R: tl.constexpr,
    FAST: tl.constexpr,
    MASK: tl.constexpr,
    ROW_SCALE: tl.constexpr,
):
    # Online row max/sum over one key tile; stores the per-(row, key block) log-sum-exp.
    # The tile's softmax runs while the tensor cores idle (nothing else is in flight), so every
    # per-score instruction counts: the mask only in tiles that reach the diagonal or the end
    # (MASK; a separate loop, as a branch on the accumulator made Triton 3.6 leave out its
    # wgmma wait and ptxas serialize the GEMMs), the scale folded into the exp2's FMA (scale > 0,
    # so max commutes with it), the row sum over the NJ block sums instead of the BN scores.
    NJ: tl.constexpr = BN // R  # key blocks per key tile
    o_n = t0 + tl.arange(0, BN)  # strided key rows
    if MASK:
        m_s = (o_n < LS)[None, :]
        if CAUSAL:
            m_s = m_s & (o_n[None, :] <= o_m[:, None])
        b_s = tl.where(m_s, b_s, float("-inf"))  # [BM, BN]
    # key row 0 is visible to every row, so m_new is finite from the first tile on
    m_new = tl.maximum(m_i, tl.max(b_s, 1) * scale)  # base-2 logits (scale: a scalar, or [BM] > 0)
    if ROW_SCALE:
        b_p = tl.exp2(b_s * scale[:, None] - m_new[:, None])  # [BM, BN]
    else:
        b_p = tl.exp2(b_s * scale - m_new[:, None])
    b_bs = tl.sum(tl.reshape(b_p, [BM, NJ, R]), 2)  # [BM, NJ]
    l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(b_bs, 1)
    b_lse = m_new[:, None] + _log2(b_bs, FAST)  # -inf where the block holds no visible key
    o_j = t0 // R + tl.arange(0, NJ)
    tl.store(p_lse + o_j[None, :], b_lse, mask=m_m[:, None] & (o_j < NB)[None, :])
    return m_new, l_i


@triton.jit
def _key_tiles(
    m_i,
    l_i,
    i_lo,
    i_hi,
    d_q,
    d_k,
    rows,
    D: tl.constexpr,
    STRIDE: tl.constexpr,
    R: tl.constexpr,
    CAUSAL: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    FLAT: tl.constexpr,
    TMA: tl.constexpr,
    FAST: tl.constexpr,
    MASK: tl.constexpr,
    ROW_SCALE: tl.constexpr,
):
    # Pass 1 over key tiles i_lo..i_hi-1: STRIDE offsets x ceil(D / BK) column chunks per tile;
    # MASK: some of their scores are invisible (causally, or past the last strided row).
    # d_q, d_k: TMA descriptors (TMA) or the raw q, k (unused); rows: the query tile's operands,
    # (p_q, p_k, s_ql, s_kl, p_lse, o_m, m_m, r0, L, LS, NB, scale), one tuple so that the
    # kernel's calls stay short (Triton inlines the call: same code as separate arguments).
    p_q, p_k, s_ql, s_kl, p_lse, o_m, m_m, r0, L, LS, NB, scale = rows
    NK: tl.constexpr = (D + BK - 1) // BK
    STEPS: tl.constexpr = STRIDE * NK
    # Each loop ends on a whole tile, so no partial accumulator is carried from one call to the next.
    b_s = tl.zeros([BM, BN], dtype=tl.float32)
    if FLAT:
        # One flat loop over (key tile, offset, column chunk): the load pipeline runs across key
        # tiles instead of draining every STEPS steps (the persistent-matmul pattern).
        for it in range(i_lo * STEPS, i_hi * STEPS):
            i_s = it % STEPS
            t0 = (it // STEPS) * BN
            b_q, b_k = _load_qk(
                p_q, p_k, d_q, d_k, s_ql, s_kl, r0, t0, i_s // NK, (i_s % NK) * BK, L, D, STRIDE, BM, BN, BK, TMA
            )
            b_s = dot(b_q, b_k, b_s)
            if i_s == STEPS - 1:
                m_i, l_i = _tile_lse(
                    b_s, m_i, l_i, p_lse, o_m, m_m, t0, LS, NB, scale, CAUSAL, BM, BN, R, FAST, MASK, ROW_SCALE
                )
                b_s = tl.zeros([BM, BN], dtype=tl.float32)
    else:
        for i_t in range(i_lo, i_hi):
            t0 = i_t * BN
            for i_s in range(STEPS):
                b_q, b_k = _load_qk(
                    p_q, p_k, d_q, d_k, s_ql, s_kl, r0, t0, i_s // NK, (i_s % NK) * BK, L, D, STRIDE, BM, BN, BK, TMA
                )
                b_s = dot(b_q, b_k, b_s)
            m_i, l_i = _tile_lse(
                b_s, m_i, l_i, p_lse, o_m, m_m, t0, LS, NB, scale, CAUSAL, BM, BN, R, FAST, MASK, ROW_SCALE
            )
            b_s = tl.zeros([BM, BN], dtype=tl.float32)
    return m_i, l_i


@triton.jit(do_not_specialize=["L_BUCKET"])
def _xattn_kernel(
    q,
    k,
    lse,
    out,
    hs,
    hk,
    s_qb,
    s_qh,
    s_ql,
    s_kb,
    s_kh,
    s_kl,
    scale,
    L,
    LS,
    NB,
    row0,
    CH,
    HQ,
    G,
    L_BUCKET,
    D: tl.constexpr,
    BD: tl.constexpr,
    STRIDE: tl.constexpr,
    R: tl.constexpr,
    CAUSAL: tl.constexpr,
    IEEE: tl.constexpr,  # fp32 inputs: picks the configs (`_prune`); `dot` takes IEEE products from the dtype
    TMA: tl.constexpr,
    PARTIAL: tl.constexpr,
    ROW_SCALE: tl.constexpr,
    FAST: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    FLAT: tl.constexpr,
):
    # Grid: (row tiles of this chunk, B * HQ). Heaviest (latest) row tiles start first.
    i_m = tl.num_programs(0) - 1 - tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b, i_h = i_bh // HQ, i_bh % HQ
    i_hk = i_h // G
    BKD: tl.constexpr = min(BK, BD)  # head-dim columns per load

    r0 = row0 + i_m * BM
    o_m = r0 + tl.arange(0, BM)  # strided query rows
    row_end = tl.minimum(LS, row0 + CH)  # rows of this chunk (a tile never spills into the next)
    m_m = o_m < row_end
    p_q = q + i_b.to(tl.int64) * s_qb + i_h.to(tl.int64) * s_qh
    p_k = k + i_b.to(tl.int64) * s_kb + i_hk.to(tl.int64) * s_kh
    p_lse = lse + i_bh.to(tl.int64) * CH * NB + (o_m - row0).to(tl.int64)[:, None] * NB  # [BM, 1]
    if ROW_SCALE:  # fp8 copies (fp8=True): q's scale per strided row times k's per head rescales the scores
        scale = (
            scale
            * tl.load(hk + i_b * (HQ // G) + i_hk)
            * tl.load(hs + i_bh.to(tl.int64) * LS + o_m, mask=o_m < LS, other=1.0)
        )  # [BM]

    if CAUSAL:
        hi = tl.minimum(LS, r0 + BM)
    else:
        hi = LS
    n_tiles = tl.cdiv(hi, BN)
    # Key tiles 0..n_full-1 are visible to every row of the tile (no mask needed)
    n_full = tl.minimum(n_tiles, LS // BN)
    if CAUSAL:
        n_full = tl.minimum(n_full, (r0 + 1) // BN)

    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    rows = (p_q, p_k, s_ql, s_kl, p_lse, o_m, m_m, r0, L, LS, NB, scale)
    # Pass 1 in up to three spans of key tiles: 0..n_full-1 without the mask and n_full..n_load-1
    # with it, loaded by TMA from a 2-D view of the strided rows (VIEW) or by pointers; then, with
    # VIEW, n_load..n_tiles-1, past the view's end (a partial last strided row), by pointers.
    VIEW: tl.constexpr = TMA and D % BKD == 0
    d_q, d_k, n_load = q, k, n_tiles  # d_q, d_k: unused without VIEW
    if VIEW:
        # Strided row r is the span of STRIDE token rows from token r * STRIDE: a 2-D view
        # [rows, STRIDE * s_ql] whose columns j * s_ql + d are token r * STRIDE + j, dim d (a load
        # never crosses into the next token's row: BKD divides D). The views stop at the last full
        # strided row LSF, so a partial last row (PARTIAL: L % STRIDE != 0) reads as zeros there:
        # the query tile holding it, and key tiles holding it that this query tile can see, take
        # the pointer path. Only odd L compiles that loop in (it costs registers).
        LSF = L // STRIDE
        d_q = tl.make_tensor_descriptor(
            p_q, shape=[LSF, STRIDE * s_ql], strides=[STRIDE * s_ql, 1], block_shape=[BM, BKD]
        )
        d_k = tl.make_tensor_descriptor(
            p_k, shape=[LSF, STRIDE * s_kl], strides=[STRIDE * s_kl, 1], block_shape=[BN, BKD]
        )
        if PARTIAL:
            if not CAUSAL:
                n_load = tl.minimum(n_tiles, LSF // BN)
            n_load = tl.where(r0 + BM > LSF, 0, n_load)
        n_full = tl.minimum(n_full, n_load)
    m_i, l_i = _key_tiles(
        m_i, l_i, 0, n_full, d_q, d_k, rows, D, STRIDE, R, CAUSAL, BM, BN, BKD, FLAT, VIEW, FAST, False, ROW_SCALE
    )
    m_i, l_i = _key_tiles(
        m_i, l_i, n_full, n_load, d_q, d_k, rows, D, STRIDE, R, CAUSAL, BM, BN, BKD, FLAT, VIEW, FAST, True, ROW_SCALE
    )
    if VIEW and PARTIAL:
        m_i, l_i = _key_tiles(
            m_i, l_i, n_load, n_tiles, q, k, rows, D, STRIDE, R, CAUSAL, BM, BN, BKD, FLAT, False, FAST, True, ROW_SCALE
        )

    # pass 2: exact softmax mass per (row, key block), rows summed into query blocks. It reads
    # scratch that other threads of this program wrote (the row LSEs behind the per-block ones): a
    # CTA barrier makes those global stores visible first. Each thread sums the R rows of its
    # query block itself (R loads of [BM // R, NJ2], no shuffles, no shared memory), and only
    # the key blocks some row of the tile sees are read; the rest of the row is zeros.
    p_row = lse + tl.num_programs(1).to(tl.int64) * CH * NB + i_bh.to(tl.int64) * CH + (r0 - row0)
    tl.store(p_row + tl.arange(0, BM), m_i + tl.log2(l_i), mask=m_m)
    tl.debug_barrier()
    NJ2: tl.constexpr = 128  # key blocks per step: 4 contiguous ones per thread and row
    QB: tl.constexpr = BM // R  # query blocks of the tile
    o_q = tl.arange(0, QB)
    m_q = r0 + o_q * R < row_end
    o_i = r0 // R + o_q  # query blocks
    p_out = out + i_bh.to(tl.int64) * NB * NB + o_i.to(tl.int64)[:, None] * NB  # [QB, 1]
    p_blk = lse + i_bh.to(tl.int64) * CH * NB + (r0 - row0 + o_q * R).to(tl.int64)[:, None] * NB  # [QB, 1]
    n_vis = tl.cdiv(hi, R)  # key blocks that some row of the tile sees
    for j0 in range(0, n_vis, NJ2):
        o_j = j0 + tl.arange(0, NJ2)
        # loads in groups of 4 blocks (a mask constant over each group lets them vectorize): a group
        # that starts in the visible range may read past it or past the row; those columns are
        # zeroed before the store, and the scratch ends with the row LSEs, so reads stay inside it
        m_j = j0 + tl.arange(0, NJ2) // 4 * 4 < n_vis
        b_o = tl.zeros([QB, NJ2], dtype=tl.float32)
        for rr in tl.static_range(R):
            m_r = (r0 + o_q * R + rr < row_end) & m_q  # [QB]
            b_row = tl.load(p_row + o_q * R + rr, mask=m_r, other=0.0)
            b_lse = tl.load(p_blk + rr * NB + o_j[None, :], mask=m_r[:, None] & m_j[None, :], other=float("-inf"))
            # min: exact (a block's LSE never exceeds its row's), and no overflow on the columns
            # read past the visible range
            b_o += tl.exp2(tl.minimum(b_lse - b_row[:, None], 0.0))
        b_o = tl.where((o_j < n_vis)[None, :], b_o, 0.0)
        tl.store(p_out + o_j[None, :], b_o, mask=m_q[:, None] & (o_j < NB)[None, :])
    for j0 in range(tl.cdiv(n_vis, NJ2) * NJ2, NB, NJ2):
        o_j = j0 + tl.arange(0, NJ2)
        tl.store(p_out + o_j[None, :], tl.zeros([QB, NJ2], dtype=tl.float32), mask=m_q[:, None] & (o_j < NB)[None, :])


_xattn_kernel_tuned = autotune(
    configs=_configs(),
    key=["D", "STRIDE", "R", "CAUSAL", "IEEE", "TMA", "PARTIAL", "ROW_SCALE", "FAST", "L_BUCKET"],
    prune_configs_by={"early_config_prune": _prune},
)(_xattn_kernel)


def _length_bucket(LS: int) -> int:
    """Coarse length class for the autotune key (0: < 256 strided rows ... 4: 2048-4095, i.e. 16K
    tokens at stride 8, 5: >= 4096), so a short first call does not pick the tiles for 64K. Not a
    kernel constant: changing it re-benchmarks, never recompiles."""
    return min(max(LS.bit_length() - 8, 0), _LONG_BUCKET)


def _tma_layout_ok(*tensors: torch.Tensor) -> bool:
    """TMA descriptors per (batch, head) slice of [B, H, L, D] tensors: every stride aligned."""
    return tma_ok_whole(*tensors)


@functools.lru_cache(maxsize=None)
def _only_config(cls: str, R: int) -> dict | None:
    """The launch parameters when launch class `cls` keeps exactly one config for R (what `_prune`
    would leave the autotuner, which then only costs host time per call), else None."""
    kept = [c for c in _configs() if _keep(c, R) and cls in _GPU_CONFIGS.get(_as_tuple(c), ())]
    if len(kept) != 1:
        return None
    return dict(kept[0].kwargs, num_warps=kept[0].num_warps, num_stages=kept[0].num_stages)


def _check_device(q):
    if not q.is_cuda and not _INTERPRET:
        raise ValueError(
            "block_importance(method='xattn') runs on CUDA tensors (or under TRITON_INTERPRET=1); "
            "on the CPU use qvl_kernels.block_importance.naive.block_importance"
        )


def _xattn(q, k, block, stride, causal, out, *, tma=True, config=None, row_scale=None):
    """xattn scores into `out`. tma: TMA descriptor loads of q and k where the layout allows (else
    pointer gathers); False forces the gathers. config: None to autotune, or explicit launch parameters
    {"BM", "BN", "BK", "FLAT", "num_warps", "num_stages"} (benchmarks: every candidate as is).
    row_scale: None, or (q_scale, k_scale), fp32 [B, HQ, ceil(L / stride)] and [B, HKV] contiguous:
    factors of each strided query row's scores and of each KV head's, for the fp8 copies of
    `quantize_fp8` (block_importance(fp8=True))."""
    _check_device(q)
    B, HQ, L, D = q.shape
    HKV = k.shape[1]
    R = block // stride
    LS = triton.cdiv(L, stride)
    NB = triton.cdiv(L, block)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    # The descriptors cover the L // stride full strided rows: none when L < stride.
    tma = bool(tma) and L >= stride and _tma_layout_ok(q, k)
    if tma:
        ensure_tma_allocator()
    # Strided query rows per chunk: a multiple of ROW_ALIGN, scratch under SCRATCH_BYTES.
    CH = max(ROW_ALIGN, SCRATCH_BYTES // (4 * B * HQ * (NB + 1)) // ROW_ALIGN * ROW_ALIGN)
    CH = min(CH, triton.cdiv(LS, ROW_ALIGN) * ROW_ALIGN)
    # per (strided row, key block) LSEs, then one LSE per strided row
    lse = torch.empty(B * HQ * CH * (NB + 1), device=q.device, dtype=torch.float32)
    scale = math.log2(math.e) / (math.sqrt(D) * stride)
    consts = dict(
        D=D,
        BD=triton.next_power_of_2(D),
        STRIDE=stride,
        R=R,
        CAUSAL=bool(causal),
        IEEE=q.dtype == torch.float32,
        TMA=tma,
        PARTIAL=tma and L % stride != 0,
        ROW_SCALE=row_scale is not None,
        FAST=not _INTERPRET,
    )
    if config is None and not _INTERPRET:
        config = _only_config(_launch_class(consts["IEEE"], tma, _length_bucket(LS), consts["ROW_SCALE"]), R)
    if config is not None:
        cfg = dict(config)
        launch = dict(num_warps=cfg.pop("num_warps", 8), num_stages=cfg.pop("num_stages", 3))
    for row0 in range(0, LS, CH):
        rows = min(CH, LS - row0)
        hs, hk = (out, out) if row_scale is None else row_scale
        args = (
            q,
            k,
            lse,
            out,
            hs,
            hk,
            q.stride(0),
            q.stride(1),
            q.stride(2),
            k.stride(0),
            k.stride(1),
            k.stride(2),
            scale,
            L,
            LS,
            NB,
            row0,
            CH,
            HQ,
            HQ // HKV,
            _length_bucket(LS),
        )
        if config is None:
            _xattn_kernel_tuned[lambda meta, rows=rows: (triton.cdiv(rows, meta["BM"]), B * HQ)](*args, **consts)
        else:
            _xattn_kernel[(triton.cdiv(rows, cfg["BM"]), B * HQ)](*args, **consts, **cfg, **launch)
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
    fp8: bool = False,
) -> torch.Tensor:
    """Block importance S of PSA (see `naive.py` for the exact definition).

    q: [B, HQ, L, D]; k: [B, HKV, L, D], HQ = G * HKV, query head h reads KV head h // G (K is
    never copied per query head). Last dimension contiguous; other strides are free.
    block: tokens per block (128, a power of two >= 16); stride: xattn stride s (8, a power of
    two <= block); method: "xattn" (default) or "pooling"; causal: True.
    out: optional [B, HQ, nb, nb] fp32 contiguous output to write into.
    fp8: opt-in, xattn only: q (per strided row) and k (per head) are quantized to float8_e4m3fn
    (`quantize.quantize_fp8`, two Triton passes, no host sync) and the scores computed on the
    fp8 copies, with both scales folded into each query row's score scale. Needs sm_89 or newer (or the
    interpreter). Same result as the reference with fp8=True, not as fp8=False: e4m3 keeps 3
    mantissa bits. Extra memory: the fp8 copies of q and k (1 byte per value).
    Returns S: [B, HQ, nb, nb] fp32, nb = ceil(L / block); rows sum to the number of strided rows
    of the query block (xattn) or to 1 (pooling); causally invisible entries are 0.
    Extra memory: at most SCRATCH_BYTES (512 MiB) of scratch, whatever L. No host sync.
    """
    B, HQ, HKV, L, D, nb = check_args(q, k, block, stride, method)
    check_fp8(method, fp8)
    if out is None:
        out = torch.empty(B, HQ, nb, nb, device=q.device, dtype=torch.float32)
    elif out.shape != (B, HQ, nb, nb) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous fp32 [{B}, {HQ}, {nb}, {nb}] tensor")
    if method == "pooling":
        return _pooling(q, k, block, causal, out)
    if fp8:
        _check_device(q)
        if q.is_cuda and capability(q.device) < (8, 9):
            raise ValueError("block_importance(fp8=True) needs fp8 tensor cores (sm_89 or newer)")
        q8, k8, q_scale, k_scale = quantize_fp8(q, k, stride=stride)
        return _xattn(q8, k8, block, stride, causal, out, row_scale=(q_scale, k_scale))
    return _xattn(q, k, block, stride, causal, out)
