"""Would the vision tower's SiLU-gate, folded into the gate/up product's epilogue, pay for itself?

    PYTHONPATH=. python3 benchmarks/experiments/tower_epilogue.py [--rows 8192] [--repeat 32]
    TRITON_INTERPRET=1 PYTHONPATH=. python3 benchmarks/experiments/tower_epilogue.py --check

The tower's gated MLP today (qvl/engine/fuse.py: gated_mlp) is cuBLAS's product of the padded
gate/up weight ([2 x 3456, 1280], bias in its epilogue), then qvl_kernels' silu_mul reading both
halves back and writing the activation: at 64 frames (32,768 patches) ~8 ms of the tower's ~92 ms
of kernels is that second pass, and the product writes twice the activation's bytes. Here one
Triton kernel computes gate and up tiles of the same columns into two accumulators and writes
only silu(gate) * up. The question is whether a plain Triton product loses more to cuBLAS than
the pass it saves. Printed: ms per chunk of `--rows` patches for cuBLAS + silu_mul, cuBLAS alone,
the fused kernel (autotuned), the ratio, and the error of each against an fp32 reference; JSON
with --out. `--check` runs the fused kernel under the Triton interpreter on small fp32 shapes
against eager PyTorch (no GPU), so the kernel can be trusted before it is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@triton.jit
def _gemm_silu_gate_kernel(
    X,
    WG,
    WU,
    BG,
    BU,
    Y,
    M,
    N,
    K,
    s_xm,
    s_wn,
    s_ym,
    HAS_BIAS: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    GROUP: tl.constexpr,
):
    # Grouped tile order: GROUP row tiles share each column tile of the weights while it is in L2.
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    per_group = GROUP * tiles_n
    first_m = (pid // per_group) * GROUP
    size_m = min(tiles_m - first_m, GROUP)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    o_m = pid_m * BM + tl.arange(0, BM)
    o_n = pid_n * BN + tl.arange(0, BN)
    o_k = tl.arange(0, BK)
    m_m, m_n = o_m < M, o_n < N
    p_x = X + o_m[:, None].to(tl.int64) * s_xm + o_k[None, :]
    p_g = WG + o_n[None, :].to(tl.int64) * s_wn + o_k[:, None]  # [BK, BN] of the gate weight, transposed
    p_u = WU + o_n[None, :].to(tl.int64) * s_wn + o_k[:, None]
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BK)):
        m_k = o_k < K - k * BK
        b_x = tl.load(p_x, mask=m_m[:, None] & m_k[None, :], other=0.0)
        b_g = tl.load(p_g, mask=m_k[:, None] & m_n[None, :], other=0.0)
        b_u = tl.load(p_u, mask=m_k[:, None] & m_n[None, :], other=0.0)
        acc_g = tl.dot(b_x, b_g, acc_g)
        acc_u = tl.dot(b_x, b_u, acc_u)
        p_x += BK
        p_g += BK
        p_u += BK
    if HAS_BIAS:
        acc_g += tl.load(BG + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
        acc_u += tl.load(BU + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
    b_y = acc_g * tl.sigmoid(acc_g) * acc_u
    p_y = Y + o_m[:, None].to(tl.int64) * s_ym + o_n[None, :]
    tl.store(p_y, b_y.to(Y.dtype.element_ty), mask=m_m[:, None] & m_n[None, :])


CONFIGS = [
    triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP": 8}, num_warps=w, num_stages=s)
    for bm, bn, bk, w, s in [
        (128, 128, 64, 8, 3),
        (128, 128, 64, 8, 4),
        (128, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (128, 128, 32, 8, 4),
        (256, 64, 64, 8, 3),
    ]
]
_tuned = triton.autotune(CONFIGS, key=["M", "N", "K"])(_gemm_silu_gate_kernel)


def gemm_silu_gate(x, gate_up, bias, width: int, config: dict | None = None) -> torch.Tensor:
    """silu(x @ gate.T + b_gate) * (x @ up.T + b_up) with `gate_up` = [gate; up], each `width` rows.
    config: one fixed tile set (the interpreter), else autotuned."""
    M, K = x.shape
    y = torch.empty(M, width, device=x.device, dtype=x.dtype)
    gate, up = gate_up[:width], gate_up[width:]
    b_gate, b_up = (bias[:width], bias[width:]) if bias is not None else (x, x)
    args = (x, gate, up, b_gate, b_up, y, M, width, K, x.stride(0), gate_up.stride(0), y.stride(0), bias is not None)
    if config is not None:
        grid = (triton.cdiv(M, config["BM"]) * triton.cdiv(width, config["BN"]),)
        _gemm_silu_gate_kernel[grid](*args, **config)
    else:
        _tuned[lambda meta: (triton.cdiv(M, meta["BM"]) * triton.cdiv(width, meta["BN"]),)](*args)
    return y


def eager(x, gate_up, bias, width: int) -> torch.Tensor:
    both = F.linear(x, gate_up, bias)
    return F.silu(both[:, :width]) * both[:, width:]


def check() -> None:
    """The fused kernel against eager PyTorch in fp32, odd sizes included (the interpreter)."""
    torch.manual_seed(0)
    config = {"BM": 16, "BN": 16, "BK": 16, "GROUP": 2}
    for m, k, width, with_bias in [(37, 40, 24, True), (64, 32, 48, False), (5, 17, 9, True)]:
        x = torch.randn(m, k)
        gate_up = torch.randn(2 * width, k) / k**0.5
        bias = torch.randn(2 * width) if with_bias else None
        got = gemm_silu_gate(x, gate_up, bias, width, config)
        want = eager(x, gate_up, bias, width)
        error = ((got - want).norm() / want.norm()).item()
        print(f"M={m} K={k} width={width} bias={with_bias}: relative error {error:.2e}")
        assert error < 1e-5, error
    print("fused kernel matches eager")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192, help="patches per chunk (the tower's MLP_CHUNK)")
    parser.add_argument("--width", type=int, default=3456, help="the padded intermediate width")
    parser.add_argument("--hidden", type=int, default=1280)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.check:
        check()
        return

    from common import timed

    from qvl_kernels.silu_mul import silu_mul

    torch.manual_seed(0)
    device, dtype = "cuda", torch.bfloat16
    x = torch.randn(args.rows, args.hidden, device=device, dtype=dtype)
    gate_up = (torch.randn(2 * args.width, args.hidden, device=device) / args.hidden**0.5).to(dtype)
    bias = (torch.randn(2 * args.width, device=device) * 0.1).to(dtype)
    w = args.width
    reference = eager(x.float(), gate_up.float(), bias.float(), w)

    def stock():
        both = F.linear(x, gate_up, bias)
        return silu_mul(both[:, :w], both[:, w:])

    rows = {
        "cuBLAS + silu_mul (today)": stock,
        "cuBLAS product alone": lambda: F.linear(x, gate_up, bias),
        "fused Triton kernel": lambda: gemm_silu_gate(x, gate_up, bias, w),
    }
    flops = 2 * args.rows * args.hidden * 2 * w
    results = {}
    print(
        f"{'[' + str(args.rows) + ' x ' + str(args.hidden) + '] -> ' + str(w):<34} {'ms':>8} {'TFLOP/s':>8} {'rel err':>9}"
    )
    for name, fn in rows.items():
        ms = timed(fn)
        out = fn()
        error = None if out.shape[1] != w else ((out.float() - reference).norm() / reference.norm()).item()
        results[name] = {"ms": ms, "tflops": flops / ms / 1e9, "rel_error": error}
        shown = "" if error is None else f"{error:.2e}"
        print(f"{name:<34} {ms:>8.3f} {flops / ms / 1e9:>8.0f} {shown:>9}")
    ratio = results["cuBLAS + silu_mul (today)"]["ms"] / results["fused Triton kernel"]["ms"]
    print(f"fused / today: {ratio:.2f}x faster; at 64 frames the tower runs 4 chunks in each of 32 layers")
    print(f"best config: {_tuned.best_config}")
    if args.out:
        meta = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
        with open(args.out, "w") as fh:
            json.dump({"meta": meta, "args": vars(args), "rows": results}, fh, indent=1)


if __name__ == "__main__":
    main()
