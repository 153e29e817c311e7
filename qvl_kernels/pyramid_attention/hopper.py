"""Pyramid attention for Hopper (sm_90) in Gluon: persistent, warp-specialized, softmax overlapped with the GEMMs.

Same definition and arguments as the Triton kernel in triton.py (naive.py has the
math); this one exists for speed on H100/H200 only. Triton 3.6 emits `wgmma.wait_group 0` after
every GEMM of the attention loop and lines both warpgroups of a program up at CTA-wide barriers,
so softmax and tensor cores never overlap (benchmarks/NOTES-psa.md). Here each program (one per
SM, persistent) runs three partitions over a list of work items (128 query rows of one head):

- a loader warp builds the TMA descriptors once, then for each item loads Q (one 64-row box per
  consumer) and walks the row's list of key tiles, keeping STAGES tiles of K and V in flight
  (mbarriers: K ready, V ready, and a "free" barrier both consumers arrive on);
- two consumer warpgroups, 64 query rows each, run for key tile t what FlashAttention-3 calls
  intra-warpgroup overlap:

      S_t = Q K_t^T           (issued, async)
      O  += P_{t-1} V_{t-1}   (issued, async)
      wait for S_t only       (wgmma.wait_group 1)
      softmax of S_t          <- runs while P_{t-1} V_{t-1} is on the tensor cores
      wait for O; O *= alpha_t; release tile t - 1's stage

  The two warpgroups share no barrier, so one's softmax also fills the other's GEMM gaps.
  Each writes its 64 rows of O through its own Q buffer with one TMA store, then frees that
  buffer for the next row's Q.

Work order: KV head by KV head (programs running at once share one KV head's K/V in L2), and
within one, the heaviest causal rows first across its query heads (the schedule ends on light
rows). Each item's list metadata is loaded one item ahead. Measured steps: benchmarks/experiments/NOTES-psa.md.

Each query row walks one stream of full 128-key tiles: the masked edge block first (the
diagonal when causal, the last block otherwise), then its level-1 blocks, then its 2x, 4x and 8x
pooled blocks packed R per tile (R TMA boxes of 128 / R pooled rows land side by side in one
shared-memory tile, so coarse levels run full-width GEMMs). A tile's level is uniform, so its
ln r bias is one scalar folded into the softmax; the unused slots of a level's last tile repeat a
listed block and are masked to -inf. The row's first tile has no P V of a previous one to
overlap, so it runs a step without it (no wasted GEMM, and few registers live for the mask math
of the edge).

No interpreter runs Gluon: on the CPU this file is only imported; the gpu-marked tests compare
it with naive.py and SDPA on an H100/H200 (tests/kernels/test_pyramid_attention.py).
"""

from __future__ import annotations

import torch
import triton

from .._device import capability
from .._tma import ensure_tma_allocator, tma_ok_whole

try:  # Gluon ships with Triton >= 3.5; older or CPU-only installs use the Triton kernel.
    from triton.compiler.errors import CompilationError
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    HAVE_GLUON = True
    # What a Triton with another Gluon API raises at the first call (the caller falls back).
    GLUON_COMPILE_ERRORS = (CompilationError, AttributeError, TypeError)
except ImportError:  # pragma: no cover - depends on the installed Triton
    HAVE_GLUON = False
    GLUON_COMPILE_ERRORS = ()

BLOCK = 128  # the only block size this kernel takes (the library default; also its query and key tile)


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int, pool_in_kernel: bool) -> bool:
    """Whether this kernel can run the call (else the Triton kernel does)."""
    if not (HAVE_GLUON and q.is_cuda and not pool_in_kernel and block == BLOCK):
        return False
    if capability(q.device) != (9, 0):
        return False
    if q.dtype not in (torch.bfloat16, torch.float16) or not (q.dtype == k.dtype == v.dtype):
        return False
    if q.shape[-1] not in (64, 128):
        return False
    return tma_ok_whole(q, k, v)  # TMA reads q, k and v in place through 4-D descriptors


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
        # R boxes of 128 / R pooled rows side by side in one [128, D] tile.
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
    def _issue_tile(
        g,
        t,
        T,
        lvl,
        j0,
        j1,
        j2,
        j3,
        j4,
        j5,
        j6,
        j7,
        i_b,
        i_hk,
        dk1,
        dv1,
        dk2,
        dv2,
        dk4,
        dv4,
        dk8,
        dv8,
        row2,
        row4,
        row8,
        k_bufs,
        v_bufs,
        bars_k,
        bars_v,
        TILE_BYTES: gl.constexpr,
        STAGES: gl.constexpr,
    ):
        # Start the TMA loads of the row's tile t (the program's g-th tile; K and V, one barrier
        # each) into stage g % STAGES.
        s = g % STAGES
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
        if lvl == 0:  # K/V [B, HKV, L, D] in place, any strides: 4-D boxes [1, 1, 128, D]
            BOX: gl.constexpr = [1, 1, kd.shape[0], kd.shape[1]]
            tma.async_copy_global_to_shared(dk1, [i_b, i_hk, j0 * 128, 0], bk, kd.reshape(BOX))
            tma.async_copy_global_to_shared(dv1, [i_b, i_hk, j0 * 128, 0], bv, vd.reshape(BOX))
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
    def _attn_step(
        g0,
        pos,
        t,
        q_smem,
        k_bufs,
        v_bufs,
        bars_k,
        bars_v,
        bars_free,
        acc_s,
        acc_o,
        p_op,
        m_i,
        l_i,
        qk_scale,
        T1,
        T2,
        T4,
        c0,
        c1,
        c2,
        c3,
        c4,
        j_edge,
        lev_edge,
        o_m,
        L,
        s_layout: gl.constexpr,
        o_layout: gl.constexpr,
        p_layout: gl.constexpr,
        STAGES: gl.constexpr,
        MASKED: gl.constexpr,
        FIRST: gl.constexpr,
        CAUSAL: gl.constexpr,
    ):
        # Stream position pos of the row (the program's tile g0 + pos; listed tile t, or the edge
        # block when MASKED) for one consumer warpgroup: see the module docstring for the order of
        # operations. FIRST: the row's first tile (no previous P V; acc_o is still zero).
        g = g0 + pos
        s = g % STAGES
        mbarrier.wait(bars_k.index(s), (g // STAGES) & 1)
        acc_s = warpgroup_mma(q_smem, k_bufs.index(s).permute((1, 0)), acc_s, use_acc=False, is_async=True)
        if FIRST:
            acc_s = warpgroup_mma_wait(0, deps=(acc_s,))
        else:
            g_prev = g - 1
            s_prev = g_prev % STAGES
            mbarrier.wait(bars_v.index(s_prev), (g_prev // STAGES) & 1)
            acc_o = warpgroup_mma(p_op, v_bufs.index(s_prev), acc_o, is_async=True)
            acc_s = warpgroup_mma_wait(1, deps=(acc_s,))

        # Online softmax of S_t in the log2 domain; the tile's level r adds log2 r to every score.
        cols = gl.arange(0, 128, layout=gl.SliceLayout(0, s_layout))
        if MASKED:
            # The edge block (the diagonal when causal, else the last block) at ratio R = 2^lr:
            # column g is pooled group g of the block. Everything is in per-row thresholds and
            # scalars, not per-column vectors (those pushed the warpgroup past its registers, and
            # libdevice's log2 per column made this step ~4 us per row: trace, H200).
            x0 = j_edge * 128
            lr = (lev_edge >= 2).to(gl.int32) + (lev_edge >= 4).to(gl.int32) + (lev_edge >= 8).to(gl.int32)
            n_in = gl.minimum(L - x0, 128)  # tokens of the block inside the sequence
            rem = n_in & (lev_edge - 1)  # tokens in a final partial group (0: none)
            pc = gl.where(rem > 0, n_in >> lr, -1)  # its column: bias log2(rem), not lr
            # Row x sees columns g < thr(x): full group g ends at x0 + (g + 1) R - 1; the partial
            # group ends at L - 1.
            if CAUSAL:
                thr = (o_m - x0 + 1) >> lr
                thr = gl.where(o_m >= L - 1, gl.maximum(thr, pc + 1), thr)
            else:
                thr = gl.full_like(o_m, (n_in + lev_edge - 1) >> lr)
            sc = gl.where(cols[None, :] < thr[:, None], acc_s * qk_scale + lr.to(gl.float32), float("-inf"))
            if rem > 0:
                corr = gl.log2(rem.to(gl.float32)) - lr.to(gl.float32)
                sc = gl.where((cols == pc)[None, :], sc + corr, sc)
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

        if not FIRST:
            acc_o, p_op = warpgroup_mma_wait(0, deps=(acc_o, p_op))
            acc_o = acc_o * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
            # The previous tile is done (its S and P V): hand its stage back to the loader.
            mbarrier.arrive(bars_free.index(s_prev))
        return acc_s, acc_o, p_new, m_new, l_i

    @gluon.jit
    def _work_item(w, NB, HQ, G):
        # Work item w -> (query tile, batch, query head, KV head, row of levels). KV head by KV
        # head (the programs running at once share one KV head's K and V in L2: all heads at once
        # missed L2 at 64K, 14% slower on an H200), and within one, heaviest (last, when causal)
        # query tiles first across its G query heads, so the schedule ends on light tiles.
        HKV = HQ // G
        g = w // (G * NB)  # (batch, KV head)
        r = w % (G * NB)
        i_m = NB - 1 - r // G
        i_b = g // HKV
        i_hk = g % HKV
        i_h = i_hk * G + r % G
        return i_m, i_b, i_h, i_hk, (i_b * HQ + i_h) * NB + i_m

    @gluon.jit
    def _row_meta(META, w, NB, HQ, G, n_items):
        # The list metadata of work item w's row (w clamped to the last item, so a prefetch past
        # the end stays in bounds): level offsets c0..c4, edge block, edge level.
        i_m, i_b, i_h, i_hk, i_row = _work_item(gl.minimum(w, n_items - 1), NB, HQ, G)
        p_meta = META + i_row.to(gl.int64) * 8
        return (
            gl.load(p_meta),
            gl.load(p_meta + 1),
            gl.load(p_meta + 2),
            gl.load(p_meta + 3),
            gl.load(p_meta + 4),
            gl.load(p_meta + 5),
            gl.load(p_meta + 6),
        )

    @gluon.jit
    def _row_stream(c0, c1, c2, c3, c4, lev_edge):
        # The row's stream: the edge block (if any), level-1 tiles, then 2x, 4x, 8x tiles (R
        # blocks each). Listed tile t is stream position t + (n_tiles - T).
        T1 = c1 - c0
        T2 = T1 + (c2 - c1 + 1) // 2
        T4 = T2 + (c3 - c2 + 3) // 4
        T = T4 + (c4 - c3 + 7) // 8
        has_edge = (lev_edge == 1) | (lev_edge == 2) | (lev_edge == 4) | (lev_edge == 8)
        return T1, T2, T4, T, T + has_edge.to(gl.int32)

    @gluon.jit
    def _consumer(
        WG: gl.constexpr,
        q_bufs,
        k_bufs,
        v_bufs,
        bars_q,
        bars_qfree,
        bars_k,
        bars_v,
        bars_free,
        O,
        META,
        s_ob,
        s_oh,
        s_ol,
        qk_scale,
        B,
        L,
        NB,
        HQ,
        G,
        n_items,
        D: gl.constexpr,
        CAUSAL: gl.constexpr,
        STAGES: gl.constexpr,
    ):
        # One warpgroup: query rows [64 WG, 64 WG + 64) of each work item, every tile of its row.
        WM: gl.constexpr = 64
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 128, 16]
        )
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16]
        )
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        dtype: gl.constexpr = q_bufs.dtype
        q_smem = q_bufs.index(WG)
        O_BOX: gl.constexpr = [1, 1, WM, D]
        d_o = tma.make_tensor_descriptor(
            O, [B, HQ, L, D], [s_ob, s_oh, s_ol, 1], O_BOX, gl.NVMMASharedLayout.get_default_for(O_BOX, dtype)
        )
        bar_q = bars_q.index(WG)
        bar_qfree = bars_qfree.index(WG)
        g0 = 0  # tiles this program has consumed
        n_q = 0  # non-empty rows (Q loads) so far
        # Each item's metadata is loaded one item ahead, so its latency hides behind a row's work.
        # The loader walks the same items and tiles in the same order (keep the two in step).
        nx0, nx1, nx2, nx3, nx4, nx5, nx6 = _row_meta(META, gl.program_id(0), NB, HQ, G, n_items)
        for w in range(gl.program_id(0), n_items, gl.num_programs(0)):
            i_m, i_b, i_h, i_hk, i_row = _work_item(w, NB, HQ, G)
            c0, c1, c2, c3, c4, j_edge, lev_edge = nx0, nx1, nx2, nx3, nx4, nx5, nx6
            nx0, nx1, nx2, nx3, nx4, nx5, nx6 = _row_meta(META, w + gl.num_programs(0), NB, HQ, G, n_items)
            T1, T2, T4, T, n_tiles = _row_stream(c0, c1, c2, c3, c4, lev_edge)
            row0 = i_m * 128 + WG * WM
            o_m = row0 + gl.arange(0, WM, layout=gl.SliceLayout(1, s_layout))
            m_i = gl.full([WM], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
            l_i = gl.zeros([WM], gl.float32, gl.SliceLayout(1, s_layout))
            acc_s = gl.zeros([WM, 128], gl.float32, s_layout)
            acc_o = gl.zeros([WM, D], gl.float32, o_layout)
            p_op = gl.zeros([WM, 128], dtype, p_layout)
            if n_tiles > 0:
                mbarrier.wait(bar_q, n_q & 1)
                e = n_tiles - T  # 1: the row has an edge block, and it comes first
                if e > 0:
                    acc_s, acc_o, p_op, m_i, l_i = _attn_step(
                        g0,
                        0,
                        T,
                        q_smem,
                        k_bufs,
                        v_bufs,
                        bars_k,
                        bars_v,
                        bars_free,
                        acc_s,
                        acc_o,
                        p_op,
                        m_i,
                        l_i,
                        qk_scale,
                        T1,
                        T2,
                        T4,
                        c0,
                        c1,
                        c2,
                        c3,
                        c4,
                        j_edge,
                        lev_edge,
                        o_m,
                        L,
                        s_layout,
                        o_layout,
                        p_layout,
                        STAGES,
                        True,
                        True,
                        CAUSAL,
                    )
                else:
                    acc_s, acc_o, p_op, m_i, l_i = _attn_step(
                        g0,
                        0,
                        0,
                        q_smem,
                        k_bufs,
                        v_bufs,
                        bars_k,
                        bars_v,
                        bars_free,
                        acc_s,
                        acc_o,
                        p_op,
                        m_i,
                        l_i,
                        qk_scale,
                        T1,
                        T2,
                        T4,
                        c0,
                        c1,
                        c2,
                        c3,
                        c4,
                        j_edge,
                        lev_edge,
                        o_m,
                        L,
                        s_layout,
                        o_layout,
                        p_layout,
                        STAGES,
                        False,
                        True,
                        CAUSAL,
                    )
                for pos in range(1, n_tiles):
                    acc_s, acc_o, p_op, m_i, l_i = _attn_step(
                        g0,
                        pos,
                        pos - e,
                        q_smem,
                        k_bufs,
                        v_bufs,
                        bars_k,
                        bars_v,
                        bars_free,
                        acc_s,
                        acc_o,
                        p_op,
                        m_i,
                        l_i,
                        qk_scale,
                        T1,
                        T2,
                        T4,
                        c0,
                        c1,
                        c2,
                        c3,
                        c4,
                        j_edge,
                        lev_edge,
                        o_m,
                        L,
                        s_layout,
                        o_layout,
                        p_layout,
                        STAGES,
                        False,
                        False,
                        CAUSAL,
                    )
                # The last tile's P @ V, then its stage goes back too.
                g_last = g0 + n_tiles - 1
                s_last = g_last % STAGES
                mbarrier.wait(bars_v.index(s_last), (g_last // STAGES) & 1)
                acc_o = warpgroup_mma(p_op, v_bufs.index(s_last), acc_o, is_async=True)
                acc_o = warpgroup_mma_wait(0, deps=(acc_o, p_op))[0]
                mbarrier.arrive(bars_free.index(s_last))
                # O goes out through this warpgroup's Q buffer (Q is done with) and one TMA store:
                # plain stores from the MMA layout are 64 2-byte stores per thread, and cost ~4%
                # of dense time (H200). Rows past L are clipped by the descriptor. Then the
                # loader may bring the next row's Q into the buffer.
                l_o = gl.convert_layout(gl.where(l_i > 0, l_i, 1.0), gl.SliceLayout(1, o_layout))
                q_smem.store((acc_o / l_o[:, None]).to(dtype))
                fence_async_shared()
                tma.async_copy_shared_to_global(d_o, [i_b, i_h, row0, 0], q_smem.reshape(O_BOX))
                tma.store_wait(0)
                mbarrier.arrive(bar_qfree)
                n_q += 1
            else:  # a row that saw no key at all gets 0 (its Q buffer may be loading: plain stores)
                o_mo = row0 + gl.arange(0, WM, layout=gl.SliceLayout(1, o_layout))
                o_do = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
                p_o = (
                    O
                    + i_b.to(gl.int64) * s_ob
                    + i_h.to(gl.int64) * s_oh
                    + o_mo[:, None].to(gl.int64) * s_ol
                    + o_do[None, :]
                )
                gl.store(p_o, acc_o.to(dtype), mask=(o_mo < L)[:, None])
            g0 += n_tiles

    @gluon.jit
    def _issue_q(dq, q_bufs, bars_q, bars_qfree, n_q, i_b, i_h, i_m, Q_BYTES: gl.constexpr):
        # Q of the n_q-th non-empty row: one 64-row box per consumer, once it released the last one.
        Q_BOX: gl.constexpr = [1, 1, q_bufs.shape[1], q_bufs.shape[2]]
        for wg in gl.static_range(2):
            mbarrier.wait(bars_qfree.index(wg), (n_q & 1) ^ 1)  # a fresh barrier passes phase 1
            mbarrier.expect(bars_q.index(wg), Q_BYTES)
            tma.async_copy_global_to_shared(
                dq, [i_b, i_h, i_m * 128 + wg * 64, 0], bars_q.index(wg), q_bufs.index(wg).reshape(Q_BOX)
            )

    @gluon.jit
    def _loader(
        q_bufs,
        k_bufs,
        v_bufs,
        bars_q,
        bars_qfree,
        bars_k,
        bars_v,
        bars_free,
        META,
        IDX,
        Q,
        K,
        V,
        K2,
        V2,
        K4,
        V4,
        K8,
        V8,
        s_qb,
        s_qh,
        s_ql,
        s_kb,
        s_kh,
        s_kl,
        s_vb,
        s_vh,
        s_vl,
        B,
        L,
        NB,
        HQ,
        G,
        n_items,
        D: gl.constexpr,
        TILE_BYTES: gl.constexpr,
        STAGES: gl.constexpr,
    ):
        # One warp: for each work item, Q (two boxes of 64 rows, one per consumer) and then the
        # row's tiles, keeping STAGES tiles of K and V in flight; runs ahead into the next item.
        # TMA descriptors are built here once per program (host-built ones cost ~10 us of Python
        # each per call): Q, K, V [B, H, L, D] in place, any strides; pooled K/V as rows of D.
        HKV = HQ // G
        dtype: gl.constexpr = q_bufs.dtype
        lay_q: gl.constexpr = gl.NVMMASharedLayout.get_default_for([1, 1, 64, D], dtype)
        lay_kv: gl.constexpr = gl.NVMMASharedLayout.get_default_for([1, 1, 128, D], dtype)
        dq = tma.make_tensor_descriptor(Q, [B, HQ, L, D], [s_qb, s_qh, s_ql, 1], [1, 1, 64, D], lay_q)
        dk1 = tma.make_tensor_descriptor(K, [B, HKV, L, D], [s_kb, s_kh, s_kl, 1], [1, 1, 128, D], lay_kv)
        dv1 = tma.make_tensor_descriptor(V, [B, HKV, L, D], [s_vb, s_vh, s_vl, 1], [1, 1, 128, D], lay_kv)
        n2 = B * HKV * ((L + 1) // 2)
        n4 = B * HKV * ((L + 3) // 4)
        n8 = B * HKV * ((L + 7) // 8)
        lay2: gl.constexpr = gl.NVMMASharedLayout.get_default_for([64, D], dtype)
        lay4: gl.constexpr = gl.NVMMASharedLayout.get_default_for([32, D], dtype)
        lay8: gl.constexpr = gl.NVMMASharedLayout.get_default_for([16, D], dtype)
        dk2 = tma.make_tensor_descriptor(K2, [n2, D], [D, 1], [64, D], lay2)
        dv2 = tma.make_tensor_descriptor(V2, [n2, D], [D, 1], [64, D], lay2)
        dk4 = tma.make_tensor_descriptor(K4, [n4, D], [D, 1], [32, D], lay4)
        dv4 = tma.make_tensor_descriptor(V4, [n4, D], [D, 1], [32, D], lay4)
        dk8 = tma.make_tensor_descriptor(K8, [n8, D], [D, 1], [16, D], lay8)
        dv8 = tma.make_tensor_descriptor(V8, [n8, D], [D, 1], [16, D], lay8)
        Q_BYTES: gl.constexpr = TILE_BYTES // 2
        g0 = 0
        n_q = 0
        # Each item's metadata is loaded one item ahead, so its latency hides behind a row's work.
        nx0, nx1, nx2, nx3, nx4, nx5, nx6 = _row_meta(META, gl.program_id(0), NB, HQ, G, n_items)
        for w in range(gl.program_id(0), n_items, gl.num_programs(0)):
            i_m, i_b, i_h, i_hk, i_row = _work_item(w, NB, HQ, G)
            c0, c1, c2, c3, c4, j_edge, lev_edge = nx0, nx1, nx2, nx3, nx4, nx5, nx6
            nx0, nx1, nx2, nx3, nx4, nx5, nx6 = _row_meta(META, w + gl.num_programs(0), NB, HQ, G, n_items)
            T1, T2, T4, T, n_tiles = _row_stream(c0, c1, c2, c3, c4, lev_edge)
            bhk = i_b * HKV + i_hk
            row2 = bhk * ((L + 1) // 2)
            row4 = bhk * ((L + 3) // 4)
            row8 = bhk * ((L + 7) // 8)
            p_idx = IDX + i_row.to(gl.int64) * NB
            e = n_tiles - T  # the edge block (if any) goes first
            for pos in range(0, n_tiles):
                t = pos - e  # listed tile t; T stands for the edge block
                if t < 0:
                    t = T
                lvl, j0, j1, j2, j3, j4, j5, j6, j7 = _fetch_indices(
                    t, T, T1, T2, T4, c0, c1, c2, c3, c4, p_idx, j_edge, lev_edge
                )
                g = g0 + pos
                # Wait until both consumers released tile g - STAGES (a fresh barrier passes phase 1).
                mbarrier.wait(bars_free.index(g % STAGES), ((g // STAGES) & 1) ^ 1)
                _issue_tile(
                    g,
                    t,
                    T,
                    lvl,
                    j0,
                    j1,
                    j2,
                    j3,
                    j4,
                    j5,
                    j6,
                    j7,
                    i_b,
                    i_hk,
                    dk1,
                    dv1,
                    dk2,
                    dv2,
                    dk4,
                    dv4,
                    dk8,
                    dv8,
                    row2,
                    row4,
                    row8,
                    k_bufs,
                    v_bufs,
                    bars_k,
                    bars_v,
                    TILE_BYTES,
                    STAGES,
                )
                if pos == 0:
                    # Q after the row's first tile: Q waits for the previous row's O store, and the
                    # first K/V tile should not wait behind it. (Tiles 0..STAGES-1 of this row need
                    # only stages the previous rows release, so the consumers cannot be starved.)
                    _issue_q(dq, q_bufs, bars_q, bars_qfree, n_q, i_b, i_h, i_m, Q_BYTES)
                    n_q += 1
            g0 += n_tiles

    @gluon.jit
    def _pyramid_attn_hopper(
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
        s_kb,
        s_kh,
        s_kl,
        s_vb,
        s_vh,
        s_vl,
        s_ob,
        s_oh,
        s_ol,
        qk_scale,
        B,
        L,
        NB,
        HQ,
        G,
        n_items,
        D: gl.constexpr,
        CAUSAL: gl.constexpr,
        STAGES: gl.constexpr,
        num_warps: gl.constexpr,
    ):
        # Persistent: program p takes work items p, p + P, ... (one query tile of one head each).
        dtype: gl.constexpr = Q.dtype.element_ty
        tile_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([128, D], dtype)
        TILE_BYTES: gl.constexpr = 128 * D * dtype.primitive_bitwidth // 8
        q_bufs = gl.allocate_shared_memory(dtype, [2, 64, D], tile_layout)
        k_bufs = gl.allocate_shared_memory(dtype, [STAGES, 128, D], tile_layout)
        v_bufs = gl.allocate_shared_memory(dtype, [STAGES, 128, D], tile_layout)
        bars_q = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        bars_qfree = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        bars_k = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        bars_v = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        bars_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(2):
            mbarrier.init(bars_q.index(i), count=1)
            mbarrier.init(bars_qfree.index(i), count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(bars_k.index(i), count=1)
            mbarrier.init(bars_v.index(i), count=1)
            mbarrier.init(bars_free.index(i), count=2)  # one arrival per consumer warpgroup
        fence_async_shared()

        # Two consumer warpgroups (64 query rows each, not synchronised with each other, so one's
        # softmax fills the other's GEMM gaps) and one loader warp.
        gl.warp_specialize(
            [
                (
                    _consumer,
                    (
                        0,
                        q_bufs,
                        k_bufs,
                        v_bufs,
                        bars_q,
                        bars_qfree,
                        bars_k,
                        bars_v,
                        bars_free,
                        O,
                        META,
                        s_ob,
                        s_oh,
                        s_ol,
                        qk_scale,
                        B,
                        L,
                        NB,
                        HQ,
                        G,
                        n_items,
                        D,
                        CAUSAL,
                        STAGES,
                    ),
                ),
                (
                    _consumer,
                    (
                        1,
                        q_bufs,
                        k_bufs,
                        v_bufs,
                        bars_q,
                        bars_qfree,
                        bars_k,
                        bars_v,
                        bars_free,
                        O,
                        META,
                        s_ob,
                        s_oh,
                        s_ol,
                        qk_scale,
                        B,
                        L,
                        NB,
                        HQ,
                        G,
                        n_items,
                        D,
                        CAUSAL,
                        STAGES,
                    ),
                ),
                (
                    _loader,
                    (
                        q_bufs,
                        k_bufs,
                        v_bufs,
                        bars_q,
                        bars_qfree,
                        bars_k,
                        bars_v,
                        bars_free,
                        META,
                        IDX,
                        Q,
                        K,
                        V,
                        K2,
                        V2,
                        K4,
                        V4,
                        K8,
                        V8,
                        s_qb,
                        s_qh,
                        s_ql,
                        s_kb,
                        s_kh,
                        s_kl,
                        s_vb,
                        s_vh,
                        s_vl,
                        B,
                        L,
                        NB,
                        HQ,
                        G,
                        n_items,
                        D,
                        TILE_BYTES,
                        STAGES,
                    ),
                ),
            ],
            [4, 1],
            [224, 64],
        )


_SM_COUNT: dict[int, int] = {}


def pyramid_attention_hopper(q, k, v, pooled, lists, causal: bool, scale: float, stages: int = 3) -> torch.Tensor:
    """Run the Gluon kernel. pooled = (k2, k4, k8, v2, v4, v8) contiguous; lists from build_block_lists.

    stages: K/V tiles in flight (3 is fastest: docs/psa-kernels.md)."""
    B, HQ, L, D = q.shape
    HKV = k.shape[1]
    nb = triton.cdiv(L, BLOCK)
    k2, k4, k8, v2, v4, v8 = (x.contiguous() for x in pooled)
    idx, meta = lists
    o = torch.empty_like(q)
    ensure_tma_allocator()  # descriptors are built on the device, in a scratch buffer Triton asks for
    dev = q.device.index if q.device.index is not None else torch.cuda.current_device()
    if dev not in _SM_COUNT:
        _SM_COUNT[dev] = torch.cuda.get_device_properties(dev).multi_processor_count
    n_items = nb * B * HQ
    _pyramid_attn_hopper[(min(n_items, _SM_COUNT[dev]),)](
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
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        o.stride(0),
        o.stride(1),
        o.stride(2),
        scale * 1.4426950408889634,
        B,
        L,
        nb,
        HQ,
        HQ // HKV,
        n_items,
        D=D,
        CAUSAL=bool(causal),
        STAGES=stages,
        num_warps=4,
    )
    return o
