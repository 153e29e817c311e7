"""Triton pyramid attention: one online softmax over full-resolution and mean-pooled key blocks.

The definition is in naive.py; docs/psa-kernels.md has the derivations (why a pooled score adds
ln r, pooled-key causality, partial groups) and the design measurements.

Plan of one call (three launches, no host sync):
1. `mean_pool_kv` (qvl_kernels.pooling) builds the 2x, 4x and 8x pooled K and V once,
   [B, HKV, ceil(L/r), D] each, in one launch and one pass (or POOL_IN_KERNEL pools inside the
   loop: 7-10x slower).
2. `_block_lists_kernel` compacts every (batch, head, query block) row of `levels` into the key
   blocks it uses, grouped by level (level 1, then 2, 4, 8), plus the "edge" block handled last
   with masks: the diagonal block when causal, the last key block when not. Level-0 blocks are
   not listed and cost nothing.
3. `_pyramid_attn_kernel`: one program per (query tile, batch * query head); query head h reads
   KV head h // G in place. For each level r it walks its part of the list with r a constexpr (one
   generic code path, four instances) and no masks, packing several coarse blocks into one
   full-width tile; K/V tiles come through TMA descriptors where the layout allows; then the edge
   block, with the causal and length masks.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from .._autotune import autotune
from .._dot import dot
from .._tma import ensure_tma_allocator, tma_ok
from ..pooling import mean_pool_kv
from .naive import check_args

_META = 8  # int32 per row in the list metadata: 5 level offsets, edge block, edge level, pad


@triton.jit
def _block_lists_kernel(
    LEV,
    IDX,
    META,
    s_lb,
    s_lh,
    s_li,
    s_lj,
    HQ,
    NB,
    CAUSAL: tl.constexpr,
    BLOCK_NB: tl.constexpr,
):
    # One program per (batch, head, query block) row: counting sort of the row by level.
    i_row = tl.program_id(0)
    i_bh, i_i = i_row // NB, i_row % NB
    i_b, i_h = i_bh // HQ, i_bh % HQ
    o_j = tl.arange(0, BLOCK_NB)
    p_lev = LEV + i_b.to(tl.int64) * s_lb + i_h.to(tl.int64) * s_lh + i_i.to(tl.int64) * s_li
    b_lev = tl.load(p_lev + o_j * s_lj, mask=o_j < NB, other=0).to(tl.int32)  # [BNB]
    if CAUSAL:
        i_edge = i_i
    else:
        i_edge = NB - 1
    m_reg = o_j < i_edge  # causal: only blocks left of the diagonal; else all but the last
    p_idx = IDX + i_row.to(tl.int64) * NB
    p_meta = META + i_row.to(tl.int64) * 8
    n = 0
    tl.store(p_meta, n)
    for c in tl.static_range(4):
        m_c = m_reg & (b_lev == (1 << c))
        o_pos = n + tl.cumsum(m_c.to(tl.int32), 0) - 1
        tl.store(p_idx + o_pos, o_j, mask=m_c)
        n += tl.sum(m_c.to(tl.int32), 0)
        tl.store(p_meta + 1 + c, n)
    lev_edge = tl.load(p_lev + i_edge * s_lj).to(tl.int32)
    tl.store(p_meta + 5, i_edge)
    tl.store(p_meta + 6, lev_edge)


@triton.jit
def _softmax_step(b_s, b_m, b_l, qk_scale, R: tl.constexpr):
    # Online softmax of one unmasked tile of raw scores q.k at ratio R: returns p, alpha and the
    # new max m (log2 units) and sum l. The scale rides in the exponent's FMA (s * scale - m), not
    # in a multiply per score (free, and a little faster where the softmax is the bottleneck).
    LOG2R: tl.constexpr = math.log2(R)
    b_m_new = tl.maximum(b_m, tl.max(b_s, 1) * qk_scale + LOG2R)
    b_p = tl.math.exp2(b_s * qk_scale - (b_m_new - LOG2R)[:, None])
    b_alpha = tl.math.exp2(b_m - b_m_new)
    b_l = b_l * b_alpha + tl.sum(b_p, 1)
    return b_p, b_alpha, b_m_new, b_l


@triton.jit
def _load_pooled(
    p_x,
    s_l,
    s_d,
    o_n,
    m_n,
    o_d,
    m_d,
    L,
    R: tl.constexpr,
    CN: tl.constexpr,
    BLOCK_D: tl.constexpr,
    POOL_IN_KERNEL: tl.constexpr,
):
    # [CN, BD] tile of keys (or values) at ratio R, rows o_n (pooled indices).
    if POOL_IN_KERNEL and R > 1:
        o_t = (o_n[:, None] * R + tl.arange(0, R)[None, :]).reshape(CN * R)  # raw token index
        m_t = (m_n[:, None] & (tl.arange(0, R)[None, :] >= 0)).reshape(CN * R) & (o_t < L)
        b_x = tl.load(
            p_x + o_t[:, None].to(tl.int64) * s_l + o_d[None, :] * s_d, mask=m_t[:, None] & m_d[None, :], other=0.0
        ).to(tl.float32)  # [CN*R, BD]
        b_x = tl.sum(tl.reshape(b_x, (CN, R, BLOCK_D)), axis=1)
        b_cnt = tl.maximum(tl.minimum(L - o_n * R, R), 1).to(tl.float32)
        b_x = (b_x / b_cnt[:, None]).to(p_x.dtype.element_ty)
    else:
        b_x = tl.load(
            p_x + o_n[:, None].to(tl.int64) * s_l + o_d[None, :] * s_d, mask=m_n[:, None] & m_d[None, :], other=0.0
        )
    return b_x


# The helpers below pass their common operands as tuples, unpacked at the top of each helper:
# Triton inlines the calls, so the compiled code is the one of separate arguments, and the calls
# (one per level and per edge level) stay one line each.
#   qt: the query tile and what every step of it reads: (b_q, o_m, o_d, m_d, L, qk_scale).
#   kv: the kernel's K/V arguments and this program's (batch, KV head): (K, V, K2, V2, K4, V4, K8,
#       V8, s_kb, s_kh, s_kl, s_kd, s_vb, s_vh, s_vl, s_vd, i_b, i_hk, HKV).
#   kvp: `_level_pointers`' (batch, KV head) slice at one ratio: (p_k, p_v, s_kl, s_kd, s_vl, s_vd).
#   row: this program's row of the block lists: (IDX, p_meta, i_row, NB).


@triton.jit
def _attend_tile(
    b_acc,
    b_m,
    b_l,
    qt,
    kvp,
    o_n,
    m_n,
    R: tl.constexpr,
    CN: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr,
    COLMASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    POOL_IN_KERNEL: tl.constexpr,
):
    # One online-softmax step over CN keys at ratio R: rows o_n of the pooled K/V (valid where m_n).
    # MASKED (the edge block): causal + length masks and the partial-group bias; a row may still
    # have seen nothing. COLMASK: only invalid columns are masked (a packed tile's tail).
    b_q, o_m, o_d, m_d, L, qk_scale = qt
    p_k, p_v, s_kl, s_kd, s_vl, s_vd = kvp
    LOG2R: tl.constexpr = math.log2(R)
    b_k = _load_pooled(p_k, s_kl, s_kd, o_n, m_n, o_d, m_d, L, R, CN, BLOCK_D, POOL_IN_KERNEL)
    b_s = dot(b_q, tl.trans(b_k), None) * qk_scale  # [BM, CN], log2 domain
    if MASKED:
        b_last = tl.minimum(o_n * R + R, L) - 1
        if R > 1:  # a final partial group stands for fewer than R tokens: log2(count), not log2(R)
            b_s += tl.log2(tl.maximum(b_last - o_n * R + 1, 1).to(tl.float32))[None, :]
        m_s = m_n[None, :]
        if CAUSAL:
            m_s = m_s & (b_last[None, :] <= o_m[:, None])
        b_s = tl.where(m_s, b_s, float("-inf"))
    else:
        if R > 1:
            b_s += LOG2R
        if COLMASK:
            b_s = tl.where(m_n[None, :], b_s, float("-inf"))
    b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
    if MASKED:
        b_m_use = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
    else:
        b_m_use = b_m_new
    b_p = tl.math.exp2(b_s - b_m_use[:, None])
    b_alpha = tl.math.exp2(b_m - b_m_use)
    b_l = b_l * b_alpha + tl.sum(b_p, 1)
    b_v = _load_pooled(p_v, s_vl, s_vd, o_n, m_n, o_d, m_d, L, R, CN, BLOCK_D, POOL_IN_KERNEL)
    b_acc = b_acc * b_alpha[:, None]
    b_acc = dot(b_p.to(b_v.dtype), b_v, b_acc)
    return b_acc, b_m_new, b_l


@triton.jit
def _attend_block(
    b_acc,
    b_m,
    b_l,
    qt,
    kvp,
    i_j,
    R: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    POOL_IN_KERNEL: tl.constexpr,
):
    # Key block i_j at ratio R: NP = BLOCK / R pooled keys, in chunks of CN (at least 16, the
    # smallest dot; columns past NP are masked when NP < 16).
    L = qt[4]
    NP: tl.constexpr = BLOCK // R
    CN: tl.constexpr = max(min(BLOCK_N, NP), 16)
    NC: tl.constexpr = max(NP // CN, 1)
    PAD: tl.constexpr = NP < CN
    for i_c in tl.static_range(NC):
        o_c = i_c * CN + tl.arange(0, CN)  # pooled index inside the block
        o_n = i_j * NP + o_c  # pooled index in the sequence
        m_n = o_c < NP
        if MASKED:
            m_n = m_n & (o_n * R < L)
        b_acc, b_m, b_l = _attend_tile(
            b_acc, b_m, b_l, qt, kvp, o_n, m_n, R, CN, BLOCK_D, MASKED, PAD, CAUSAL, POOL_IN_KERNEL
        )
    return b_acc, b_m, b_l


@triton.jit
def _attend_block_tma(
    b_acc, b_m, b_l, b_q, d_k, d_v, i_j, qk_scale, R: tl.constexpr, BLOCK: tl.constexpr, CN: tl.constexpr
):
    # The unmasked block step with K/V tiles brought in by the tensor-memory accelerator (TMA).
    NP: tl.constexpr = BLOCK // R
    for i_c in tl.static_range(NP // CN):
        b_k = d_k.load([i_j * NP + i_c * CN, 0])  # [CN, BD]
        b_p, b_alpha, b_m, b_l = _softmax_step(dot(b_q, tl.trans(b_k), None), b_m, b_l, qk_scale, R)
        b_v = d_v.load([i_j * NP + i_c * CN, 0])
        b_acc = b_acc * b_alpha[:, None]
        b_acc = dot(b_p.to(b_v.dtype), b_v, b_acc)
    return b_acc, b_m, b_l


@triton.jit
def _level_pointers(kv, L, D: tl.constexpr, R: tl.constexpr, POOL_IN_KERNEL: tl.constexpr):
    # Base pointers and strides of the (batch, KV head) slice of K and V at ratio R.
    K, V, K2, V2, K4, V4, K8, V8, s_kb, s_kh, s_kl, s_kd, s_vb, s_vh, s_vl, s_vd, i_b, i_hk, HKV = kv
    if R == 1 or POOL_IN_KERNEL:
        p_k = K + i_b.to(tl.int64) * s_kb + i_hk.to(tl.int64) * s_kh
        p_v = V + i_b.to(tl.int64) * s_vb + i_hk.to(tl.int64) * s_vh
        return p_k, p_v, s_kl, s_kd, s_vl, s_vd
    else:
        L_R = (L + R - 1) // R  # pooled tensors are contiguous [B, HKV, L_R, D]
        off = (i_b.to(tl.int64) * HKV + i_hk) * L_R * D
        if R == 2:
            return K2 + off, V2 + off, D, 1, D, 1
        elif R == 4:
            return K4 + off, V4 + off, D, 1, D, 1
        else:
            return K8 + off, V8 + off, D, 1, D, 1


@triton.jit
def _level_loop(
    b_acc,
    b_m,
    b_l,
    qt,
    kv,
    row,
    R: tl.constexpr,
    C: tl.constexpr,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    POOL_IN_KERNEL: tl.constexpr,
    TMA: tl.constexpr,
):
    # All list entries of this row at level R (C = log2 R): unmasked blocks only.
    b_q, L, qk_scale = qt[0], qt[4], qt[5]
    IDX, p_meta, i_row, NB = row
    kvp = _level_pointers(kv, L, D, R, POOL_IN_KERNEL)
    p_k, p_v, s_l_k, s_d_k, s_l_v, s_d_v = kvp
    i_start = tl.load(p_meta + C)
    i_end = tl.load(p_meta + C + 1)
    p_idx = IDX + i_row.to(tl.int64) * NB
    NP: tl.constexpr = BLOCK // R
    BPT: tl.constexpr = max(BLOCK_N // NP, 1)  # key blocks packed into one tile
    if BPT > 1:
        # Pooled blocks hold fewer than BLOCK_N keys: gather BPT list entries into one full tile
        # (rows i_j * NP + c of the pooled K/V), so coarse levels run full-width dots.
        CN: tl.constexpr = BPT * NP
        o_c = tl.arange(0, CN)
        for i_e in range(i_start, i_end, BPT):
            o_e = i_e + o_c // NP
            m_e = o_e < i_end
            b_j = tl.load(p_idx + o_e, mask=m_e, other=0)
            o_n = b_j * NP + o_c % NP
            b_acc, b_m, b_l = _attend_tile(
                b_acc, b_m, b_l, qt, kvp, o_n, m_e, R, CN, BLOCK_D, False, True, CAUSAL, POOL_IN_KERNEL
            )
    elif TMA and NP >= 16:
        CN_T: tl.constexpr = min(BLOCK_N, NP)
        L_R = (L + R - 1) // R
        d_k = tl.make_tensor_descriptor(p_k, shape=[L_R, D], strides=[s_l_k, 1], block_shape=[CN_T, BLOCK_D])
        d_v = tl.make_tensor_descriptor(p_v, shape=[L_R, D], strides=[s_l_v, 1], block_shape=[CN_T, BLOCK_D])
        for i_e in tl.range(i_start, i_end):
            i_j = tl.load(p_idx + i_e)
            b_acc, b_m, b_l = _attend_block_tma(b_acc, b_m, b_l, b_q, d_k, d_v, i_j, qk_scale, R, BLOCK, CN_T)
    else:
        for i_e in range(i_start, i_end):
            i_j = tl.load(p_idx + i_e)
            b_acc, b_m, b_l = _attend_block(
                b_acc, b_m, b_l, qt, kvp, i_j, R, BLOCK, BLOCK_N, BLOCK_D, False, CAUSAL, POOL_IN_KERNEL
            )
    return b_acc, b_m, b_l


@triton.jit
def _edge(
    b_acc,
    b_m,
    b_l,
    qt,
    kv,
    i_j,
    R: tl.constexpr,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    POOL_IN_KERNEL: tl.constexpr,
):
    # The edge block i_j at ratio R, with the causal and length masks.
    kvp = _level_pointers(kv, qt[4], D, R, POOL_IN_KERNEL)
    return _attend_block(b_acc, b_m, b_l, qt, kvp, i_j, R, BLOCK, BLOCK_N, BLOCK_D, True, CAUSAL, POOL_IN_KERNEL)


@triton.jit
def _pyramid_attn_kernel(
    Q,
    K,
    V,
    K2,
    V2,
    K4,
    V4,
    K8,
    V8,
    O,
    IDX,
    META,
    s_qb,
    s_qh,
    s_ql,
    s_qd,
    s_kb,
    s_kh,
    s_kl,
    s_kd,
    s_vb,
    s_vh,
    s_vl,
    s_vd,
    s_ob,
    s_oh,
    s_ol,
    s_od,
    qk_scale,
    L,
    NB,
    HQ,
    G,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
    CAUSAL: tl.constexpr,
    POOL_IN_KERNEL: tl.constexpr,
    TMA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Heaviest query tiles (last rows, causal) start first.
    i_m = tl.num_programs(0) - 1 - tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b, i_h = i_bh // HQ, i_bh % HQ
    i_hk = i_h // G
    HKV = HQ // G
    i_row = i_bh * NB + (i_m * BLOCK_M) // BLOCK  # row of `levels` (and of the lists)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    m_m = o_m < L
    p_q = Q + i_b.to(tl.int64) * s_qb + i_h.to(tl.int64) * s_qh + o_m[:, None].to(tl.int64) * s_ql + o_d[None, :] * s_qd
    b_q = tl.load(p_q, mask=m_m[:, None] & m_d[None, :], other=0.0)  # [BM, BD]

    b_m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BLOCK_M], dtype=tl.float32)
    b_acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    p_meta = META + i_row.to(tl.int64) * 8
    qt = (b_q, o_m, o_d, m_d, L, qk_scale)
    kv = (K, V, K2, V2, K4, V4, K8, V8, s_kb, s_kh, s_kl, s_kd, s_vb, s_vh, s_vl, s_vd, i_b, i_hk, HKV)
    row = (IDX, p_meta, i_row, NB)
    # Levels 1, 2, 4, 8 in turn (unrolled: R is a constexpr in each).
    for c in tl.static_range(4):
        b_acc, b_m, b_l = _level_loop(
            b_acc, b_m, b_l, qt, kv, row, 1 << c, c, D, BLOCK, BLOCK_N, BLOCK_D, CAUSAL, POOL_IN_KERNEL, TMA
        )
    # The edge block (diagonal when causal, last key block otherwise), with masks.
    i_j = tl.load(p_meta + 5)
    lev = tl.load(p_meta + 6)
    # One branch per level (R is a constexpr in each); an if/elif chain, as a static_range loop of
    # ifs compiles a CTA barrier between consecutive ifs.
    if lev == 1:
        b_acc, b_m, b_l = _edge(b_acc, b_m, b_l, qt, kv, i_j, 1, D, BLOCK, BLOCK_N, BLOCK_D, CAUSAL, POOL_IN_KERNEL)
    elif lev == 2:
        b_acc, b_m, b_l = _edge(b_acc, b_m, b_l, qt, kv, i_j, 2, D, BLOCK, BLOCK_N, BLOCK_D, CAUSAL, POOL_IN_KERNEL)
    elif lev == 4:
        b_acc, b_m, b_l = _edge(b_acc, b_m, b_l, qt, kv, i_j, 4, D, BLOCK, BLOCK_N, BLOCK_D, CAUSAL, POOL_IN_KERNEL)
    elif lev == 8:
        b_acc, b_m, b_l = _edge(b_acc, b_m, b_l, qt, kv, i_j, 8, D, BLOCK, BLOCK_N, BLOCK_D, CAUSAL, POOL_IN_KERNEL)
    # A row that saw no key at all (l = 0) gets 0.
    b_o = b_acc / tl.where(b_l > 0, b_l, 1.0)[:, None]
    p_o = O + i_b.to(tl.int64) * s_ob + i_h.to(tl.int64) * s_oh + o_m[:, None].to(tl.int64) * s_ol + o_d[None, :] * s_od
    tl.store(p_o, b_o.to(O.dtype.element_ty), mask=m_m[:, None] & m_d[None, :])


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _configs():
    if _interpreting():  # one config: the interpreter is slow and autotuning would multiply it
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": 64}, num_warps=4, num_stages=1) for bm in (16, 32, 64)]
    return _gpu_configs()


def _gpu_configs():
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm in (16, 32, 64, 128)
        for bn in (64, 128)
        for w in (4, 8)
        for s in (2, 3, 4)
    ]


def _keep(conf: triton.Config, block: int, block_d: int) -> bool:
    """The configs worth compiling for a (block, head_dim) pair (the sweep: docs/benchmarks.md).

    128x128 tiles, 8 warps, 3 stages with TMA are fastest at every length; 64-row tiles are far
    slower. One config for block >= 128: autotuning between close configs, keyed without L on
    purpose, picked the slower one whenever the first call was short.
    """
    bm, bn, w, s = conf.kwargs["BLOCK_M"], conf.kwargs["BLOCK_N"], conf.num_warps, conf.num_stages
    if bm > block or bm < min(64, block):  # a query tile sits inside one level row
        return False
    if block_d > 128:  # shared memory: 128-row tiles with 3 stages of D > 128 do not fit
        return bm == min(64, block) and (bn, w, s) == (64, 4, 2)
    if block >= 128:
        return (bm, bn, w, s) == (128, 128, 8, 3)
    return (bn, w, s) == (64, 4, 3)


def _prune(configs, named_args, **kwargs):
    block = named_args["BLOCK"] if "BLOCK" in named_args else kwargs["BLOCK"]
    bd = named_args["BLOCK_D"] if "BLOCK_D" in named_args else kwargs["BLOCK_D"]
    if _interpreting():
        out = [c for c in configs if min(64, block) == c.kwargs["BLOCK_M"]]
    else:
        out = [c for c in configs if _keep(c, block, bd)]
    return out or configs[:1]


_pyramid_attn_kernel_tuned = autotune(
    configs=_configs(),
    key=["D", "BLOCK", "CAUSAL", "POOL_IN_KERNEL", "TMA"],
    prune_configs_by={"early_config_prune": _prune},
)(_pyramid_attn_kernel)


def build_block_lists(levels: torch.Tensor, causal: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact `levels` [B, HQ, nb, nb] into per-row key-block lists, grouped by level.

    Returns (idx [B, HQ, nb, nb] int32, meta [B, HQ, nb, 8] int32). For row (b, h, i):
    idx[b, h, i, meta[..., c]:meta[..., c + 1]] are the key blocks at level 2^c (c = 0..3), in
    increasing order, excluding the edge block; meta[..., 5] is the edge block (i when causal,
    nb - 1 otherwise) and meta[..., 6] its level. When causal, blocks right of the diagonal are
    dropped whatever their level. Levels other than 1, 2, 4, 8 are treated as 0.
    Entries of idx past meta[..., 4] are left unwritten.
    """
    B, HQ, nb, _ = levels.shape
    idx = torch.empty(B, HQ, nb, nb, device=levels.device, dtype=torch.int32)
    meta = torch.zeros(B, HQ, nb, _META, device=levels.device, dtype=torch.int32)
    _block_lists_kernel[(B * HQ * nb,)](
        levels,
        idx,
        meta,
        *levels.stride(),
        HQ,
        nb,
        CAUSAL=causal,
        BLOCK_NB=max(16, triton.next_power_of_2(nb)),
        num_warps=4,
    )
    return idx, meta


def pyramid_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    levels: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    block: int = 128,
    pool_in_kernel: bool = False,
    pooled: tuple | None = None,
    lists: tuple | None = None,
    config: dict | None = None,
    tma: bool = True,
) -> torch.Tensor:
    """`pyramid_attention` by the portable Triton kernel (same arguments and result).

    pool_in_kernel: pool K/V inside the loop instead of reading `mean_pool_kv`'s copies (r times
    the loads; kept as the second opinion the tests compare). pooled: (k2, k4, k8, v2, v4, v8)
    already pooled, lists: `build_block_lists(levels, causal)` already built (benchmarks time the
    kernel alone with them). config: None to autotune, or explicit launch parameters
    {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"}. tma: TMA descriptor loads of the unmasked
    tiles where the layout allows (unit stride along D, 16-byte aligned), else plain loads.
    """
    B, HQ, HKV, L, D, nb = check_args(q, k, v, levels, causal, block)
    if not q.is_cuda and not _interpreting():
        raise ValueError(
            "pyramid_attention runs on CUDA tensors (or under TRITON_INTERPRET=1); "
            "for CPU tensors use qvl_kernels.pyramid_attention.naive.pyramid_attention"
        )
    if D > 256:
        raise ValueError(f"head_dim up to 256 is supported, got {D}")
    scale = D**-0.5 if scale is None else float(scale)
    if pool_in_kernel:
        k2 = v2 = k4 = v4 = k8 = v8 = k  # unused
    else:
        if pooled is None:
            (k2, k4, k8), (v2, v4, v8) = mean_pool_kv(k, v)
        else:
            k2, k4, k8, v2, v4, v8 = pooled
    idx, meta = build_block_lists(levels, causal) if lists is None else lists
    o = torch.empty_like(q)
    args = (
        q,
        k,
        v,
        k2,
        v2,
        k4,
        v4,
        k8,
        v8,
        o,
        idx,
        meta,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *o.stride(),
        scale * 1.4426950408889634,
        L,
        nb,
        HQ,
        HQ // HKV,
    )
    # TMA needs unit stride along D and 16-byte aligned rows and bases.
    tma = bool(tma) and (q.is_cuda or _interpreting()) and tma_ok(k, v)
    if tma:
        ensure_tma_allocator()
    consts = dict(
        D=D,
        BLOCK=block,
        CAUSAL=bool(causal),
        POOL_IN_KERNEL=bool(pool_in_kernel),
        TMA=tma,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
    )
    fitted_key = (q.device, q.dtype, *consts.values())
    config = _FITTED.get(fitted_key) if config is None else config
    if config is not None:
        _launch(args, consts, config, L, B * HQ)
        return o
    try:
        grid = lambda meta_: (triton.cdiv(L, meta_["BLOCK_M"]), B * HQ)  # noqa: E731
        _pyramid_attn_kernel_tuned[grid](*args, **consts)
    except OutOfResources:
        _FITTED[fitted_key] = _launch_fitting(args, consts, L, B * HQ)
    return o


# Launch parameters tried in turn where the tuned config needs more shared memory than the card has
# (fp32 tiles take twice bf16's bytes, and pooling inside the kernel stages wider tiles, while the
# configs are chosen for bf16): the same tiles with fewer pipeline stages. Smaller tiles are not
# among them: on an H100 a 64-row tile at block 128 in fp32 did not compile within minutes.
_FITTED: dict[tuple, dict] = {}  # the config that fit, where the tuned one did not, by launch key


def _smaller_configs(block: int, block_d: int) -> list[dict]:
    (tuned,) = [c for c in _gpu_configs() if _keep(c, block, block_d)]
    tiles = {"BLOCK_M": tuned.kwargs["BLOCK_M"], "BLOCK_N": tuned.kwargs["BLOCK_N"], "num_warps": tuned.num_warps}
    return [{**tiles, "num_stages": stages} for stages in range(tuned.num_stages - 1, 0, -1)]


def _launch_fitting(args, consts: dict, L: int, programs: int) -> dict:
    """Launch with the first of `_smaller_configs` that fits; returns it."""
    configs = _smaller_configs(consts["BLOCK"], consts["BLOCK_D"])
    for config in configs[:-1]:
        try:
            _launch(args, consts, config, L, programs)
            return config
        except OutOfResources:
            continue
    _launch(args, consts, configs[-1], L, programs)
    return configs[-1]


def _launch(args, consts: dict, config: dict, L: int, programs: int) -> None:
    cfg = dict(config)
    warps, stages = cfg.pop("num_warps", 8), cfg.pop("num_stages", 3)
    grid = (triton.cdiv(L, cfg["BLOCK_M"]), programs)
    _pyramid_attn_kernel[grid](*args, **consts, **cfg, num_warps=warps, num_stages=stages)
