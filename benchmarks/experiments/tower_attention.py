"""Would the vision tower's attention gain from one Triton kernel with the rotary fused in?

    PYTHONPATH=. python3 benchmarks/experiments/tower_attention.py [--model random:7b] [--frames 64,256]
        [--out bench-out/tower_attention.json]
    TRITON_INTERPRET=1 PYTHONPATH=. python3 benchmarks/experiments/tower_attention.py --check

The tower today (qvl/engine/vision.py: `_attention`) rotates q and k in place with qvl_kernels'
rotary kernel, then runs SDPA (flash attention) over batches of equal-length sequences: windows
of 64 tokens in 28 layers, frames of 1,024 in 4. Here one kernel per layer attends within every
sequence given by its bounds (cu_seqlens), rotating q and k as it loads them, so the rotary pass
over q and k goes. Each head is two halves of D / 2 columns (rotate_half pairs column d with
d + D/2), each padded to a power of two: two products per score tile.

Printed: one layer's attention on the tower's real plan, bf16, the rotary pass + SDPA against the
kernel for each tile config (BMxBNxWARPSxSTAGES, relative RMSE against SDPA's result), then the
whole tower with the window layers' attention through the kernel (its fastest window config)
against the tower as it is. `--check` runs the kernel under the Triton interpreter on small fp32
inputs (odd, empty and long sequences) against a plain-PyTorch definition.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import kernel_ms, rel_err, synthetic_video, write_results  # noqa: E402

from qvl_kernels._dot import dot  # noqa: E402

CONFIGS = {
    "windows": [(64, 64, 4, 2), (64, 64, 4, 1), (64, 32, 4, 2), (64, 64, 8, 2), (32, 64, 4, 2)],
    "frames": [(128, 64, 8, 2), (128, 64, 4, 2), (64, 64, 4, 2)],
}


@triton.jit
def _rotated(P, C, S, rows, m_rows, s_row, s_c, s_s, o_d, m_d, D2: tl.constexpr, dt: tl.constexpr):
    """Both halves of rows `rows` of one head at P, rotated (fp32 math) and rounded to `dt`."""
    m = m_rows[:, None] & m_d[None, :]
    p = P + rows[:, None].to(tl.int64) * s_row + o_d[None, :]
    x1 = tl.load(p, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(p + D2, mask=m, other=0.0).to(tl.float32)
    pc = C + rows[:, None].to(tl.int64) * s_c + o_d[None, :]
    ps = S + rows[:, None].to(tl.int64) * s_s + o_d[None, :]
    c1 = tl.load(pc, mask=m, other=0.0).to(tl.float32)
    c2 = tl.load(pc + D2, mask=m, other=0.0).to(tl.float32)
    s1 = tl.load(ps, mask=m, other=0.0).to(tl.float32)
    s2 = tl.load(ps + D2, mask=m, other=0.0).to(tl.float32)
    return (x1 * c1 - x2 * s1).to(dt), (x2 * c2 + x1 * s2).to(dt)


@triton.jit
def _vision_attention_kernel(
    QKV,
    C,
    S,
    CU,
    O,
    s_t,
    s_w,
    s_h,
    s_c,
    s_s,
    s_ot,
    s_oh,
    tiles_per_seq,
    qk_scale,
    D2: tl.constexpr,
    HALF: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
):
    i_seq, i_tile = tl.program_id(0) // tiles_per_seq, tl.program_id(0) % tiles_per_seq
    i_h = tl.program_id(1).to(tl.int64)
    start = tl.load(CU + i_seq).to(tl.int32)
    n = tl.load(CU + i_seq + 1).to(tl.int32) - start
    if i_tile * BM >= n:
        return
    dt = O.dtype.element_ty
    o_d = tl.arange(0, HALF)
    m_d = o_d < D2
    o_m = i_tile * BM + tl.arange(0, BM)
    m_m = o_m < n
    Q = QKV + i_h * s_h
    q1, q2 = _rotated(Q, C, S, start + o_m, m_m, s_t, s_c, s_s, o_d, m_d, D2, dt)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc1 = tl.zeros([BM, HALF], tl.float32)
    acc2 = tl.zeros([BM, HALF], tl.float32)
    for j in range(0, n, BN):
        o_n = j + tl.arange(0, BN)
        m_n = o_n < n
        k1, k2 = _rotated(Q + s_w, C, S, start + o_n, m_n, s_t, s_c, s_s, o_d, m_d, D2, dt)
        s = dot(q1, tl.trans(k1), tl.zeros([BM, BN], tl.float32))
        s = dot(q2, tl.trans(k2), s) * qk_scale  # log2 units
        s = tl.where(m_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        pv = Q + 2 * s_w + (start + o_n)[:, None].to(tl.int64) * s_t + o_d[None, :]
        m_v = m_n[:, None] & m_d[None, :]
        v1 = tl.load(pv, mask=m_v, other=0.0)
        v2 = tl.load(pv + D2, mask=m_v, other=0.0)
        p = p.to(dt)
        acc1 = dot(p, v1, acc1 * alpha[:, None])
        acc2 = dot(p, v2, acc2 * alpha[:, None])
        m_i = m_new
    po = O + (start + o_m)[:, None].to(tl.int64) * s_ot + i_h * s_oh + o_d[None, :]
    m_o = m_m[:, None] & m_d[None, :]
    tl.store(po, (acc1 / l_i[:, None]).to(dt), mask=m_o)
    tl.store(po + D2, (acc2 / l_i[:, None]).to(dt), mask=m_o)


def fused_attention(qkv, cos, sin, bounds, longest: int, scale: float, config=(64, 64, 4, 1)) -> torch.Tensor:
    """[T, H, D] attention within each sequence of `bounds` ([n + 1] int32 cu_seqlens), q and k of
    qkv [T, 3, H, D] rotated by cos, sin [T, D] (fp32 math, rounded to qkv's dtype, as the tower does)."""
    T, _, H, D = qkv.shape
    bm, bn, warps, stages = config
    tiles = triton.cdiv(longest, bm)
    out = torch.empty(T, H, D, device=qkv.device, dtype=qkv.dtype)
    _vision_attention_kernel[((bounds.numel() - 1) * tiles, H)](
        qkv, cos, sin, bounds, out,
        qkv.stride(0), qkv.stride(1), qkv.stride(2), cos.stride(0), sin.stride(0), out.stride(0), out.stride(1),
        tiles, scale * 1.4426950408889634,
        D2=D // 2, HALF=max(16, triton.next_power_of_2(D // 2)), BM=bm, BN=bn, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def reference_attention(qkv, cos, sin, bounds, scale: float) -> torch.Tensor:
    """The definition: rotary (the tower's fp32 math, rounded), then softmax attention per sequence in fp32."""
    from qvl_kernels.rotary.naive import rotary

    q, k, v = qkv.unbind(1)
    q, k = rotary(q, cos, sin, fp32_math=True), rotary(k, cos, sin, fp32_math=True)
    out = torch.zeros(qkv.shape[0], *qkv.shape[2:], dtype=torch.float32, device=qkv.device)
    edges = bounds.tolist()
    for start, end in zip(edges, edges[1:]):
        qs, ks, vs = (x[start:end].float().transpose(0, 1) for x in (q, k, v))
        out[start:end] = (torch.softmax(qs @ ks.transpose(1, 2) * scale, -1) @ vs).transpose(0, 1)
    return out.to(qkv.dtype)


def check() -> None:
    for lengths, heads, dim, config in (
        ([64, 64, 64], 2, 80, (64, 64, 4, 1)),
        ([5, 0, 17, 1], 3, 16, (64, 64, 4, 1)),
        ([130, 64, 3], 2, 32, (128, 64, 8, 2)),
        ([200], 1, 80, (64, 32, 4, 2)),
    ):
        g = torch.Generator().manual_seed(sum(lengths))
        T = sum(lengths)
        qkv = torch.randn(T, 3 * heads * dim, generator=g).view(T, 3, heads, dim)
        angles = torch.randn(T, dim // 2, generator=g) * 3
        cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
        bounds = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
        out = fused_attention(qkv, cos, sin, bounds, max(lengths), dim**-0.5, config)
        err = rel_err(out, reference_attention(qkv, cos, sin, bounds, dim**-0.5))
        print(f"lengths {lengths}, {heads} heads of {dim}, config {config}: rel. RMSE {err:.2e}")
        assert err < 1e-5, err


def sequence_bounds(groups, tokens: int, device) -> tuple[torch.Tensor, int]:
    """cu_seqlens and the longest length of a plan's attention groups (each sequence contiguous)."""
    starts = []
    for g in groups:
        if g.index is None:
            starts += [g.start + i * g.length for i in range(g.count)]
        else:
            starts += g.index.view(g.count, g.length)[:, 0].tolist()
    bounds = torch.tensor(sorted(starts) + [tokens], dtype=torch.int32, device=device)
    return bounds, int((bounds[1:] - bounds[:-1]).max())


def rotary_then_sdpa(qkv, cos, sin, plan, full, scale):
    """The tower's attention as it is (vision._attention)."""
    from qvl.engine.kernels import rotary_qk
    from qvl.engine.vision import _attend

    q, k, v = qkv.unbind(1)
    rotary_qk(q, k, cos, sin, fp32_math=True, out=(q, k))
    return _attend(q, k, v, plan.frame_groups if full else plan.window_groups, scale)


def layer_rows(visual, plan, frames: int) -> list[dict]:
    from qvl.engine.vision import _rotary

    heads, dim = visual.config.num_heads, visual.config.hidden_size // visual.config.num_heads
    tokens = plan.positions.shape[0]
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(tokens, 3, heads, dim, device="cuda", dtype=torch.bfloat16, generator=g)
    cos, sin = _rotary(plan.positions, dim)
    rows = []
    for kind, full in (("windows", False), ("frames", True)):
        bounds, longest = sequence_bounds(plan.frame_groups if full else plan.window_groups, tokens, "cuda")
        reference = rotary_then_sdpa(qkv.clone(), cos, sin, plan, full, dim**-0.5)
        ms = kernel_ms(lambda: rotary_then_sdpa(qkv.clone(), cos, sin, plan, full, dim**-0.5))
        ms -= kernel_ms(lambda: qkv.clone())  # the in-place rotary needs a fresh input each call
        rows.append(dict(frames=frames, kind=kind, variant="rotary + SDPA", ms=ms, rel_err=0.0))
        print(f"{frames:>6} {kind:<8} {'rotary + SDPA':<16} {ms:>8.3f}", flush=True)
        for config in CONFIGS[kind]:
            name = "x".join(map(str, config))
            try:
                out = fused_attention(qkv, cos, sin, bounds, longest, dim**-0.5, config)
                ms = kernel_ms(lambda config=config: fused_attention(qkv, cos, sin, bounds, longest, dim**-0.5, config))
            except Exception as exc:  # noqa: BLE001 - a config that does not fit the card is a row
                print(f"{frames:>6} {kind:<8} {name:<16} failed: {type(exc).__name__}: {exc}"[:160], flush=True)
                continue
            rows.append(dict(frames=frames, kind=kind, variant=name, ms=ms, rel_err=rel_err(out, reference)))
            print(f"{frames:>6} {kind:<8} {name:<16} {ms:>8.3f} {rows[-1]['rel_err']:>9.2e}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:7b")
    parser.add_argument("--frames", default="64,256")
    parser.add_argument("--out", default="bench-out/tower_attention.json")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.check:
        check()
        return

    from qvl.engine import Engine, Request, vision

    engine = Engine(args.model)
    visual = engine.model.model.visual
    rows = []
    print(f"{'frames':>6} {'layers':<8} {'variant':<16} {'ms':>8} {'rel err':>9}")
    for frames in [int(n) for n in args.frames.split(",")]:
        inputs = engine.prepare(Request("x", video=synthetic_video(frames)))
        pixels, grid = inputs["pixel_values_videos"], inputs["video_grid_thw"]
        plan = vision.plan_tower(grid, visual.config).to("cuda")
        found = layer_rows(visual, plan, frames)
        rows += found
        best = min(
            (r for r in found if r["kind"] == "windows" and r["variant"] != "rotary + SDPA"), key=lambda r: r["ms"]
        )
        config = tuple(int(x) for x in best["variant"].split("x"))
        tokens = plan.positions.shape[0]
        windows = sequence_bounds(plan.window_groups, tokens, "cuda")

        def windows_fused(qkv, cos, sin, plan, full, scale):
            if full:
                return rotary_then_sdpa(qkv, cos, sin, plan, full, scale)
            return fused_attention(qkv, cos, sin, *windows, scale, config)

        towers = {}
        for name, attention in (
            ("tower as it is", rotary_then_sdpa),
            (f"tower, windows {best['variant']}", windows_fused),
        ):
            vision._attention = attention
            towers[name] = vision.run_tower(visual, pixels, grid, plan)
            ms = kernel_ms(lambda: vision.run_tower(visual, pixels, grid, plan), reps=5)
            err = rel_err(towers[name], towers["tower as it is"])
            rows.append(dict(frames=frames, kind="tower", variant=name, ms=ms, rel_err=err))
            print(f"{frames:>6} {'tower':<8} {name:<28} {ms:>8.2f} {err:>9.2e}", flush=True)
    write_results(Path(args.out), rows, model=args.model)


if __name__ == "__main__":
    main()
