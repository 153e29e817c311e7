"""Pyramid attention for Hopper (sm_90) in Gluon: warp-specialized, softmax overlapped with the GEMMs.

Same definition and arguments as the Triton kernel in pyramid_attention.py (naive.py has the
math); this one exists for speed on H100/H200 only. Triton 3.6 emits `wgmma.wait_group 0` after
every GEMM of the attention loop and lines both warpgroups of a program up at CTA-wide barriers,
so softmax and tensor cores never overlap (benchmarks/NOTES-psa.md). Here one program (128 query
rows) runs three partitions:

- a loader warp walks the row's list of key tiles and keeps STAGES tiles of K and V in flight
  through TMA (one mbarrier per stage for K, one for V, one "free" barrier the consumers arrive on);
- two consumer warpgroups, 64 query rows each, each run for key tile t what FlashAttention-3
  calls intra-warpgroup overlap:

      S_t = Q K_t^T           (issued, async)
      O  += P_{t-1} V_{t-1}   (issued, async)
      wait for S_t only       (wgmma.wait_group 1)
      softmax of S_t          <- runs while P_{t-1} V_{t-1} is on the tensor cores
      wait for O; O *= alpha_t; release tile t - 1's stage

  The two warpgroups share no barrier, so one's softmax also fills the other's GEMM gaps.

Each query row walks one stream of full 128-key tiles: its level-1 blocks, then its 2x, 4x and
8x pooled blocks packed R per tile (R TMA boxes of 128 / R pooled rows land side by side in one
shared-memory tile, so coarse levels run full-width GEMMs), then the masked edge block (the
diagonal when causal, the last block otherwise). A tile's level is uniform, so its ln r bias is
one scalar folded into the softmax; the unused slots of a level's last tile repeat a listed
block and are masked to -inf.

No interpreter runs Gluon: on the CPU this file is only imported; the gpu-marked tests compare
it with naive.py and SDPA on an H100/H200 (tests/kernels/test_pyramid_attention.py).
"""

from __future__ import annotations

import torch
import triton

try:  # Gluon ships with Triton >= 3.5; older or CPU-only installs use the Triton kernel.
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    HAVE_GLUON = True
except ImportError:  # pragma: no cover - depends on the installed Triton
    HAVE_GLUON = False

BLOCK = 128  # the only block size this kernel takes (the library default); others use Triton
BLOCK_M = 128  # query rows per program: two warpgroups of 64
BLOCK_N = 128  # keys per tile


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int, pool_in_kernel: bool) -> bool:
    """Whether this kernel can run the call (else the Triton kernel does)."""
    if not (HAVE_GLUON and q.is_cuda and not pool_in_kernel and block == BLOCK):
        return False
    if torch.cuda.get_device_capability(q.device) != (9, 0):
        return False
    if q.dtype not in (torch.bfloat16, torch.float16) or not (q.dtype == k.dtype == v.dtype):
        return False
    if q.shape[-1] not in (64, 128) or q.stride(-1) != 1:
        return False
    # TMA: unit stride along D, 16-byte aligned rows and bases.
    return all(t.stride(-1) == 1 and (t.stride(-2) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0
               for t in (k, v))


if HAVE_GLUON:

    @gluon.jit
    def _tile_info(t, T1, T2, T4, c0, c1, c2, c3, c4):
        # Tile t of a row's stream -> (log2 of its ratio, first list entry, end of its level's entries).
        lvl = (t >= T1).to(gl.int32) + (t >= T2).to(gl.int32) + (t >= T4).to(gl.int32)
        e0 = c0 + t
        e_end = c1
        if t >= T1:
            e0 = c1 + (t - T1) * 2
            e_end = c2
        if t >= T2:
            e0 = c2 + (t - T2) * 4
            e_end = c3
        if t >= T4:
            e0 = c3 + (t - T4) * 8
            e_end = c4
        return lvl, e0, e_end

    @gluon.jit
    def _load_coarse(desc, row0, j0, j1, j2, j3, j4, j5, j6, j7, bar, dst, R: gl.constexpr):
        # R boxes of BLOCK / R pooled rows side by side in one [BLOCK_N, D] tile.
        NP: gl.constexpr = 128 // R
        tma.async_copy_global_to_shared(desc, [row0 + j0 * NP, 0], bar, dst.slice(0, NP))
        tma.async_copy_global_to_shared(desc, [row0 + j1 * NP, 0], bar, dst.slice(NP, NP))
        if R >= 4:
            tma.async_copy_global_to_shared(desc, [row0 + j2 * NP, 0], bar, dst.slice(2 * NP, NP))
            tma.async_copy_global_to_shared(desc, [row0 + j3 * NP, 0], bar, dst.slice(3 * NP, NP))
        if R >= 8:
            tma.async_copy_global_to_shared(desc, [row0 + j4 * NP, 0], bar, dst.slice(4 * NP, NP))
            tma.async_copy_global_to_shared(desc, [row0 + j5 * NP, 0], bar, dst.slice(5 * NP, NP))
            tma.async_copy_global_to_shared(desc, [row0 + j6 * NP, 0], bar, dst.slice(6 * NP, NP))
            tma.async_copy_global_to_shared(desc, [row0 + j7 * NP, 0], bar, dst.slice(7 * NP, NP))

    @gluon.jit
    def _issue_tile(t, n_tiles, T, lvl, j0, j1, j2, j3, j4, j5, j6, j7,
                    dk1, dv1, dk2, dv2, dk4, dv4, dk8, dv8, row2, row4, row8,
                    k_bufs, v_bufs, bars_k, bars_v, TILE_BYTES: gl.constexpr, STAGES: gl.constexpr):
        # Start the TMA loads of tile t (K and V, one barrier each) into stage t % STAGES.
        if t < n_tiles:
            s = t % STAGES
            bk = bars_k.index(s)
            bv = bars_v.index(s)
            kd = k_bufs.index(s)
            vd = v_bufs.index(s)
            mbarrier.expect(bk, TILE_BYTES)
            mbarrier.expect(bv, TILE_BYTES)
            if t == T:  # the edge block at its level: one box, repeated to fill the tile
                j1 = j0
                j2 = j0
                j3 = j0
                j4 = j0
                j5 = j0
                j6 = j0
                j7 = j0
            if lvl == 0:
                tma.async_copy_global_to_shared(dk1, [j0 * 128, 0], bk, kd)
                tma.async_copy_global_to_shared(dv1, [j0 * 128, 0], bv, vd)
            elif lvl == 1:
                _load_coarse(dk2, row2, j0, j1, j2, j3, j4, j5, j6, j7, bk, kd, 2)
                _load_coarse(dv2, row2, j0, j1, j2, j3, j4, j5, j6, j7, bv, vd, 2)
            elif lvl == 2:
                _load_coarse(dk4, row4, j0, j1, j2, j3, j4, j5, j6, j7, bk, kd, 4)
                _load_coarse(dv4, row4, j0, j1, j2, j3, j4, j5, j6, j7, bv, vd, 4)
            else:
                _load_coarse(dk8, row8, j0, j1, j2, j3, j4, j5, j6, j7, bk, kd, 8)
                _load_coarse(dv8, row8, j0, j1, j2, j3, j4, j5, j6, j7, bv, vd, 8)

    @gluon.jit
    def _fetch_indices(t, T, T1, T2, T4, c0, c1, c2, c3, c4, p_idx, j_edge, lev_edge):
        # List entries of tile t (unused slots repeat the level's last entry); the edge tile uses
        # the edge block. Loaded early so their latency hides behind a GEMM.
        lvl, e0, e_end = _tile_info(t, T1, T2, T4, c0, c1, c2, c3, c4)
        listed = t < T
        last = e_end - 1
        j0 = gl.load(p_idx + gl.minimum(e0, last), mask=listed, other=0)
        j1 = gl.load(p_idx + gl.minimum(e0 + 1, last), mask=listed & (lvl >= 1), other=0)
        j2 = gl.load(p_idx + gl.minimum(e0 + 2, last), mask=listed & (lvl >= 2), other=0)
        j3 = gl.load(p_idx + gl.minimum(e0 + 3, last), mask=listed & (lvl >= 2), other=0)
        j4 = gl.load(p_idx + gl.minimum(e0 + 4, last), mask=listed & (lvl >= 3), other=0)
        j5 = gl.load(p_idx + gl.minimum(e0 + 5, last), mask=listed & (lvl >= 3), other=0)
        j6 = gl.load(p_idx + gl.minimum(e0 + 6, last), mask=listed & (lvl >= 3), other=0)
        j7 = gl.load(p_idx + gl.minimum(e0 + 7, last), mask=listed & (lvl >= 3), other=0)
        if t == T:
            j0 = j_edge
            lvl = (lev_edge >= 2).to(gl.int32) + (lev_edge >= 4).to(gl.int32) + (lev_edge >= 8).to(gl.int32)
        return lvl, j0, j1, j2, j3, j4, j5, j6, j7

    @gluon.jit
    def _attn_step(t, q_smem, k_bufs, v_bufs, bars_k, bars_v, bars_free, acc_s, acc_o, p_op, m_i, l_i, qk_scale,
                   T1, T2, T4, c0, c1, c2, c3, c4, j_edge, lev_edge, o_m, L,
                   s_layout: gl.constexpr, o_layout: gl.constexpr, p_layout: gl.constexpr,
                   STAGES: gl.constexpr, MASKED: gl.constexpr, CAUSAL: gl.constexpr):
        # One key tile for one consumer warpgroup: see the module docstring for the order.
        s = t % STAGES
        mbarrier.wait(bars_k.index(s), (t // STAGES) & 1)
        acc_s = warpgroup_mma(q_smem, k_bufs.index(s).permute((1, 0)), acc_s, use_acc=False, is_async=True)
        t_prev = gl.maximum(t - 1, 0)  # at t = 0, P is zero and V is tile 0's (finite)
        s_prev = t_prev % STAGES
        mbarrier.wait(bars_v.index(s_prev), (t_prev // STAGES) & 1)
        acc_o = warpgroup_mma(p_op, v_bufs.index(s_prev), acc_o, is_async=True)
        acc_s = warpgroup_mma_wait(1, deps=(acc_s,))

        # Online softmax of S_t in the log2 domain; the tile's level r adds log2 r to every score.
        cols = gl.arange(0, 128, layout=gl.SliceLayout(0, s_layout))
        if MASKED:
            R = lev_edge
            NP = 128 // R
            o_n = j_edge * NP + cols  # pooled key index (slots past the first repeat it: masked)
            first = o_n * R
            last = gl.minimum(first + R, L) - 1
            valid = (cols < NP) & (first < L)
            bias = gl.log2(gl.maximum(last - first + 1, 1).to(gl.float32))
            sc = acc_s * qk_scale + bias[None, :]
            ok = valid[None, :]
            if CAUSAL:
                ok = ok & (last[None, :] <= o_m[:, None])
            sc = gl.where(ok, sc, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(sc, 1))
            m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
            p = gl.exp2(sc - m_use[:, None])
            alpha = gl.exp2(m_i - m_use)
        else:
            lvl, e0, e_end = _tile_info(t, T1, T2, T4, c0, c1, c2, c3, c4)
            bias = lvl.to(gl.float32)
            ncol = gl.minimum(e_end - e0, 1 << lvl) * (128 >> lvl)
            sc = acc_s
            if ncol < 128:  # the last tile of a coarse level, not full
                sc = gl.where(cols[None, :] < ncol, sc, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(sc, 1) * qk_scale + bias)
            p = gl.exp2(sc * qk_scale - (m_new - bias)[:, None])
            alpha = gl.exp2(m_i - m_new)
        l_i = l_i * alpha + gl.sum(p, 1)
        p_new = gl.convert_layout(p.to(q_smem.dtype), p_layout)

        acc_o, p_op = warpgroup_mma_wait(0, deps=(acc_o, p_op))
        acc_o = acc_o * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
        # Tile t - 1 is done (S_{t-1} and P_{t-1} V_{t-1}): hand its stage back to the loader.
        mbarrier.arrive(bars_free.index(s_prev), pred=t > 0)
        return acc_s, acc_o, p_new, m_new, l_i

    @gluon.jit
    def _row_stream(META, i_row):
        # The row's stream: level-1 tiles, then 2x, 4x, 8x tiles (R blocks each), then the edge.
        p_meta = META + i_row.to(gl.int64) * 8
        c0 = gl.load(p_meta)
        c1 = gl.load(p_meta + 1)
        c2 = gl.load(p_meta + 2)
        c3 = gl.load(p_meta + 3)
        c4 = gl.load(p_meta + 4)
        j_edge = gl.load(p_meta + 5)
        lev_edge = gl.load(p_meta + 6)
        T1 = c1 - c0
        T2 = T1 + (c2 - c1 + 1) // 2
        T4 = T2 + (c3 - c2 + 3) // 4
        T = T4 + (c4 - c3 + 7) // 8
        has_edge = (lev_edge == 1) | (lev_edge == 2) | (lev_edge == 4) | (lev_edge == 8)
        return c0, c1, c2, c3, c4, j_edge, lev_edge, T1, T2, T4, T, has_edge

    @gluon.jit
    def _consumer(q_smem, k_bufs, v_bufs, bars_k, bars_v, bars_free, O, META, i_row, i_b, i_h, row0,
                  s_ob, s_oh, s_ol, qk_scale, L,
                  D: gl.constexpr, CAUSAL: gl.constexpr, STAGES: gl.constexpr):
        # One warpgroup: 64 query rows starting at row0, every tile of the row's stream.
        WM: gl.constexpr = 64
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, 128, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, D, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        dtype: gl.constexpr = q_smem.dtype
        c0, c1, c2, c3, c4, j_edge, lev_edge, T1, T2, T4, T, has_edge = _row_stream(META, i_row)

        o_m = row0 + gl.arange(0, WM, layout=gl.SliceLayout(1, s_layout))
        m_i = gl.full([WM], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([WM], gl.float32, gl.SliceLayout(1, s_layout))
        acc_s = gl.zeros([WM, 128], gl.float32, s_layout)
        acc_o = gl.zeros([WM, D], gl.float32, o_layout)
        p_op = gl.zeros([WM, 128], dtype, p_layout)
        for t in range(0, T):
            acc_s, acc_o, p_op, m_i, l_i = _attn_step(
                t, q_smem, k_bufs, v_bufs, bars_k, bars_v, bars_free, acc_s, acc_o, p_op, m_i, l_i, qk_scale,
                T1, T2, T4, c0, c1, c2, c3, c4, j_edge, lev_edge, o_m, L,
                s_layout, o_layout, p_layout, STAGES, False, CAUSAL)
        if has_edge:
            acc_s, acc_o, p_op, m_i, l_i = _attn_step(
                T, q_smem, k_bufs, v_bufs, bars_k, bars_v, bars_free, acc_s, acc_o, p_op, m_i, l_i, qk_scale,
                T1, T2, T4, c0, c1, c2, c3, c4, j_edge, lev_edge, o_m, L,
                s_layout, o_layout, p_layout, STAGES, True, CAUSAL)
        n_tiles = T + has_edge.to(gl.int32)
        if n_tiles > 0:  # the last tile's P @ V
            t_last = n_tiles - 1
            s_last = t_last % STAGES
            mbarrier.wait(bars_v.index(s_last), (t_last // STAGES) & 1)
            acc_o = warpgroup_mma(p_op, v_bufs.index(s_last), acc_o, is_async=True)
            acc_o = warpgroup_mma_wait(0, deps=(acc_o, p_op))[0]

        # A row that saw no key at all (l = 0) gets 0.
        l_o = gl.convert_layout(gl.where(l_i > 0, l_i, 1.0), gl.SliceLayout(1, o_layout))
        out = (acc_o / l_o[:, None]).to(dtype)
        o_mo = row0 + gl.arange(0, WM, layout=gl.SliceLayout(1, o_layout))
        o_do = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
        p_o = O + i_b.to(gl.int64) * s_ob + i_h.to(gl.int64) * s_oh \
            + o_mo[:, None].to(gl.int64) * s_ol + o_do[None, :]
        gl.store(p_o, out, mask=(o_mo < L)[:, None])

    @gluon.jit
    def _loader(k_bufs, v_bufs, bars_k, bars_v, bars_free, META, IDX, i_row, NB,
                dk1, dv1, dk2, dv2, dk4, dv4, dk8, dv8, row2, row4, row8,
                TILE_BYTES: gl.constexpr, STAGES: gl.constexpr):
        # One warp: walks the row's stream and keeps STAGES tiles of K and V in flight.
        c0, c1, c2, c3, c4, j_edge, lev_edge, T1, T2, T4, T, has_edge = _row_stream(META, i_row)
        n_tiles = T + has_edge.to(gl.int32)
        p_idx = IDX + i_row.to(gl.int64) * NB
        for t in range(0, n_tiles):
            lvl, j0, j1, j2, j3, j4, j5, j6, j7 = _fetch_indices(
                t, T, T1, T2, T4, c0, c1, c2, c3, c4, p_idx, j_edge, lev_edge)
            # Wait until both consumers released tile t - STAGES (a fresh barrier passes phase 1).
            mbarrier.wait(bars_free.index(t % STAGES), ((t // STAGES) & 1) ^ 1)
            _issue_tile(t, n_tiles, T, lvl, j0, j1, j2, j3, j4, j5, j6, j7,
                        dk1, dv1, dk2, dv2, dk4, dv4, dk8, dv8, row2, row4, row8,
                        k_bufs, v_bufs, bars_k, bars_v, TILE_BYTES, STAGES)

    @gluon.jit
    def _pyramid_attn_hopper(
        Q, O, K, V, IDX, META,
        dk2, dv2, dk4, dv4, dk8, dv8,
        s_qb, s_qh, s_ql,
        s_kb, s_kh, s_kl,
        s_vb, s_vh, s_vl,
        s_ob, s_oh, s_ol,
        qk_scale, L, NB, HQ, G,
        D: gl.constexpr, CAUSAL: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr,
    ):
        BM: gl.constexpr = 128
        BN: gl.constexpr = 128
        dtype: gl.constexpr = Q.dtype.element_ty
        TILE_BYTES: gl.constexpr = BN * D * dtype.primitive_bitwidth // 8

        i_m = gl.num_programs(0) - 1 - gl.program_id(0)  # heaviest (last, causal) tiles first
        i_bh = gl.program_id(1)
        i_b = i_bh // HQ
        i_h = i_bh % HQ
        HKV = HQ // G
        i_hk = i_h // G
        i_row = i_bh * NB + i_m  # BM == block: one query tile per row of levels

        tile_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BN, D], dtype)
        ld_layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // D, D // 8], [num_warps, 1], [1, 0])

        # Q: plain loads (any strides, rows past L are zero) into shared memory for the wgmma.
        o_mq = i_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, ld_layout))
        o_dq = gl.arange(0, D, layout=gl.SliceLayout(0, ld_layout))
        p_q = Q + i_b.to(gl.int64) * s_qb + i_h.to(gl.int64) * s_qh \
            + o_mq[:, None].to(gl.int64) * s_ql + o_dq[None, :]
        q = gl.load(p_q, mask=(o_mq < L)[:, None], other=0.0)
        q_smem = gl.allocate_shared_memory(dtype, [BM, D], tile_layout, q)

        k_bufs = gl.allocate_shared_memory(dtype, [STAGES, BN, D], tile_layout)
        v_bufs = gl.allocate_shared_memory(dtype, [STAGES, BN, D], tile_layout)
        bars_k = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        bars_v = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        bars_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(bars_k.index(i), count=1)
            mbarrier.init(bars_v.index(i), count=1)
            mbarrier.init(bars_free.index(i), count=2)  # one arrival per consumer warpgroup
        fence_async_shared()

        # Full-resolution K/V of this (batch, KV head), read in place; pooled rows start at row*.
        p_k = K + i_b.to(gl.int64) * s_kb + i_hk.to(gl.int64) * s_kh
        p_v = V + i_b.to(gl.int64) * s_vb + i_hk.to(gl.int64) * s_vh
        dk1 = tma.make_tensor_descriptor(p_k, [L, D], [s_kl, 1], [BN, D], tile_layout)
        dv1 = tma.make_tensor_descriptor(p_v, [L, D], [s_vl, 1], [BN, D], tile_layout)
        bhk = i_b * HKV + i_hk
        row2 = bhk * ((L + 1) // 2)
        row4 = bhk * ((L + 3) // 4)
        row8 = bhk * ((L + 7) // 8)

        # Two consumer warpgroups (64 query rows each, not synchronised with each other, so one's
        # softmax fills the other's GEMM gaps) and one loader warp.
        gl.warp_specialize([
            (_consumer, (q_smem.slice(0, 64), k_bufs, v_bufs, bars_k, bars_v, bars_free, O, META, i_row, i_b, i_h,
                         i_m * BM, s_ob, s_oh, s_ol, qk_scale, L, D, CAUSAL, STAGES)),
            (_consumer, (q_smem.slice(64, 64), k_bufs, v_bufs, bars_k, bars_v, bars_free, O, META, i_row, i_b, i_h,
                         i_m * BM + 64, s_ob, s_oh, s_ol, qk_scale, L, D, CAUSAL, STAGES)),
            (_loader, (k_bufs, v_bufs, bars_k, bars_v, bars_free, META, IDX, i_row, NB,
                       dk1, dv1, dk2, dv2, dk4, dv4, dk8, dv8, row2, row4, row8, TILE_BYTES, STAGES)),
        ], [4, 1], [232, 40])


def _pooled_descriptor(x: torch.Tensor, rows: int) -> "TensorDescriptor":
    # Pooled K or V, contiguous [B, HKV, L_R, D], as rows of D; boxes of `rows` pooled keys.
    flat = x.reshape(-1, x.shape[-1])
    layout = gl.NVMMASharedLayout.get_default_for([rows, x.shape[-1]], gl.bfloat16 if x.dtype == torch.bfloat16
                                                   else gl.float16)
    return TensorDescriptor(flat, list(flat.shape), list(flat.stride()), [rows, x.shape[-1]], layout)


def pyramid_attention_hopper(q, k, v, pooled, lists, causal: bool, scale: float, stages: int = 3) -> torch.Tensor:
    """Run the Gluon kernel. pooled = (k2, k4, k8, v2, v4, v8) contiguous; lists from build_block_lists."""
    from .._tma import ensure_tma_allocator

    B, HQ, L, D = q.shape
    HKV = k.shape[1]
    nb = triton.cdiv(L, BLOCK)
    k2, k4, k8, v2, v4, v8 = pooled
    idx, meta = lists
    ensure_tma_allocator()  # the level-1 descriptors are built on the device (any K/V strides)
    descs = [_pooled_descriptor(x, BLOCK // r) for x, r in ((k2, 2), (v2, 2), (k4, 4), (v4, 4), (k8, 8), (v8, 8))]
    o = torch.empty_like(q)
    _pyramid_attn_hopper[(nb, B * HQ)](
        q, o, k, v, idx, meta, *descs,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        scale * 1.4426950408889634, L, nb, HQ, HQ // HKV,
        D=D, CAUSAL=bool(causal), STAGES=stages, num_warps=4,
    )
    return o
