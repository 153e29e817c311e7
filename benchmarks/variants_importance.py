"""Every xattn block-importance variant (load path x tile config) on one GPU, against cuDNN dense attention.

    PYTHONPATH=. python3 benchmarks/variants_importance.py [--lengths 16,32,64] [--deadline 210]
        [--fp8] [--out bench-out/variants_importance.json]

7B attention shape (B 1, HQ 28, HKV 4, D 128), bf16, block 128, stride 8, causal, video-like
inputs from bench_psa.video_inputs. Per length: cuDNN SDPA dense causal attention, then the xattn
kernel launched once per variant with an explicit config (no autotuning): the pre-TMA default
(pointer path, 128x128x128 w8 s3, flat loop) first, as the reference of the checks, then the TMA
path x every config of block_importance._GPU_CONFIGS, the public block_importance() as users call
it (autotuned over those), the pointer path x the same configs, and with --fp8 q and k quantized
per head to float8_e4m3fn on the device through a few TMA configs, timed with and without the
quantization pass (plain torch ops: three passes over q and k).

Per row: median ms (CUDA events), TFLOP/s of the stride-s GEMM (2 * HQ * s*D * Ls(Ls+1)/2, Ls =
L / s), share of cuDNN dense attention, max |S - S_ref|, and the share of visible (query block,
key block) entries whose level (level_mask_triton, top-k bands 1: 0-10 %, 2: 10-20 %, 0: rest)
equals the reference's (wanted >= 99.9 %). A variant that fails to compile or launch (shared
memory) prints one line and is skipped; work left at --deadline seconds is skipped and listed.
Writes every number to --out (also when a run stops early).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_psa import timed, video_inputs  # noqa: E402  (same timing and inputs as the main benchmark)

from qvl_kernels.block_importance import block_importance  # noqa: E402
from qvl_kernels.level_mask import level_mask_triton  # noqa: E402

bi = importlib.import_module("qvl_kernels.block_importance.block_importance")  # the module (the package's
# attribute of that name is the function)

HQ, HKV, D, BLOCK, STRIDE = 28, 4, 128, 128, 8
RATIOS = {1: (0.0, 0.1), 2: (0.1, 0.2), 0: (0.2, 1.0)}
BASELINE = ("pointer", (128, 128, 128, 8, 3, True))  # the default before TMA: reference of the checks
FP8_CONFIGS = [(128, 128, 128, 8, 3, True), (128, 128, 128, 8, 4, True), (128, 256, 128, 8, 3, True),
               (256, 128, 128, 8, 3, True), (256, 128, 128, 16, 3, True), (128, 256, 64, 8, 4, True)]
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def gemm_flops(L: int) -> float:
    ls = math.ceil(L / STRIDE)
    return 2.0 * HQ * (STRIDE * D) * ls * (ls + 1) / 2


def name(path: str, cfg: tuple) -> str:
    bm, bn, bk, w, s, flat = cfg
    return f"{path} {bm}x{bn}x{bk} w{w} s{s}" + ("" if flat else " nested")


def launch_config(cfg: tuple) -> dict:
    bm, bn, bk, w, s, flat = cfg
    return dict(BM=bm, BN=bn, BK=bk, FLAT=flat, num_warps=w, num_stages=s)


def levels(scores: torch.Tensor) -> torch.Tensor:
    return level_mask_triton(scores, None, mode="topk", ratios=RATIOS)


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head float8_e4m3fn copy of x [B, H, L, D] and its fp32 scales [B, H] (x ~ x8 * scale),
    all on the device: no host sync."""
    scale = x.abs().amax(dim=(2, 3)).float().clamp(min=1e-12) / 448.0
    x8 = (x * (1.0 / scale)[..., None, None].to(x.dtype)).to(torch.float8_e4m3fn)
    return x8, scale


def fp8_inputs(q, k):
    """(q8, k8, head_scale): fp8 q and k, and each query head's score factor scale_q[h] * scale_k[h // G]."""
    q8, sq = quantize_fp8(q)
    k8, sk = quantize_fp8(k)
    return q8, k8, (sq.view(1, HKV, HQ // HKV) * sk.view(1, HKV, 1)).reshape(-1)


def fp8_importance(q8, k8, head_scale, out, cfg):
    return bi._xattn(q8, k8, BLOCK, STRIDE, True, out, tma=True, config=launch_config(cfg), head_scale=head_scale)


class Run:
    """Inputs, the cuDNN time and the reference scores and levels of every length; rows of results."""

    def __init__(self, lengths, deadline):
        self.lengths, self.deadline = lengths, deadline
        self.inputs, self.dense_ms, self.ref, self.ref_levels = {}, {}, {}, {}
        self.rows, self.skipped, self.failed = [], [], []

    def late(self) -> bool:
        return time.time() - T0 > self.deadline

    def setup(self, L: int) -> None:
        q, k, v = video_inputs(1, HQ, HKV, L, D, seed=L)
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            self.dense_ms[L] = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
        self.inputs[L] = (q, k)
        log(f"L={L}: cuDNN dense causal {self.dense_ms[L]:.2f} ms")

    def measure(self, label: str, L: int, fn) -> dict | None:
        """Time fn(out) at length L and check it against the reference; None when it fails."""
        if self.late():
            self.skipped.append(f"{label} L={L}")
            return None
        q, _ = self.inputs[L]
        nb = math.ceil(L / BLOCK)
        out = torch.empty(1, HQ, nb, nb, device=q.device, dtype=torch.float32)
        try:
            fn(out)  # compiles on the first call
            torch.cuda.synchronize()
            ms = timed(lambda: fn(out))
        except Exception as e:  # compile errors, out of shared memory, launch failures
            msg = f"{label}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            if "CUDA error" in str(e) or "illegal" in str(e).lower():
                raise  # the context is gone: stop (the JSON written so far stays)
            log(f"FAILED {msg}")
            self.failed.append(msg)
            return None
        if L not in self.ref:  # the first variant is the reference
            self.ref[L], self.ref_levels[L] = out.clone(), levels(out)
        vis = torch.ones(nb, nb, dtype=torch.bool, device=q.device).tril()
        agree = (levels(out) == self.ref_levels[L])[..., vis].float().mean().item()
        row = dict(variant=label, L=L, ms=ms, tflops=gemm_flops(L) / ms / 1e9, share=ms / self.dense_ms[L],
                   max_diff=(out - self.ref[L]).abs().max().item(), level_agree=agree)
        self.rows.append(row)
        log(f"{label:<40} L={L:>6} {ms:8.3f} ms {row['tflops']:6.0f} TFLOP/s {row['share']:6.1%} of dense "
            f"max|dS| {row['max_diff']:.2e} levels {agree:.4%}")
        return row


def variants(run: Run, todo) -> None:
    """Each (path, config) at every length, variants outside: a failed or late one is dropped whole."""
    for path, cfg in todo:
        for L in run.lengths:
            q, k = run.inputs[L]
            row = run.measure(name(path, cfg), L, lambda out, q=q, k=k: bi._xattn(
                q, k, BLOCK, STRIDE, True, out, tma=path == "tma", config=launch_config(cfg)))
            if row is None:
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16,32,64", help="thousands of tokens (x1024), comma-separated")
    parser.add_argument("--deadline", type=float, default=210.0,
                        help="seconds from the start after which remaining work is skipped (default 210)")
    parser.add_argument("--fp8", action="store_true",
                        help="also time q, k quantized per head to fp8 e4m3 (opt-in; never a default)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/variants_importance.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("variants_importance.py needs a CUDA GPU")

    lengths = [int(x) * 1024 for x in args.lengths.split(",")]
    tma = [("tma", c) for c in bi._GPU_CONFIGS]
    pointer = [("pointer", c) for c in bi._GPU_CONFIGS if ("pointer", c) != BASELINE]
    run = Run(lengths, args.deadline)
    try:
        for L in lengths:
            run.setup(L)
        q0, k0 = run.inputs[lengths[0]]
        assert bi._tma_layout_ok(q0, k0), "the inputs should allow TMA loads"
        variants(run, [BASELINE] + tma)
        # What users get: the autotuner over the TMA configs, all compiled by now (else it would
        # compile the rest here, past any deadline).
        if not run.skipped:
            for L in lengths:
                q, k = run.inputs[L]
                run.measure("block_importance() autotuned", L, lambda out, q=q, k=k: block_importance(
                    q, k, block=BLOCK, stride=STRIDE, out=out))
            log(f"autotuner's pick: {bi._xattn_kernel_tuned.best_config}")
        variants(run, pointer)
        if args.fp8:  # timed with the quantization pass (what a user would pay), and without it
            quantized = {L: fp8_inputs(*run.inputs[L]) for L in lengths}
            for cfg in FP8_CONFIGS:
                for L in lengths:
                    q, k = run.inputs[L]
                    if run.measure("fp8 " + name("tma", cfg) + " +quant", L, lambda out, q=q, k=k, cfg=cfg:
                                   fp8_importance(*fp8_inputs(q, k), out, cfg)) is None:
                        break
                    run.measure("fp8 " + name("tma", cfg) + " kernel", L, lambda out, L=L, cfg=cfg:
                                fp8_importance(*quantized[L], out, cfg))
    finally:
        report(run, args)


def report(run: Run, args) -> None:
    print(f"\n{'variant':<40} {'L':>6} {'ms':>8} {'TFLOP/s':>8} {'dense':>7} {'max|dS|':>9} {'levels':>9}")
    for r in sorted(run.rows, key=lambda r: (r["L"], r["ms"])):
        print(f"{r['variant']:<40} {r['L']:>6} {r['ms']:>8.3f} {r['tflops']:>8.0f} {r['share']:>7.1%} "
              f"{r['max_diff']:>9.2e} {r['level_agree']:>9.4%}")
    best = {}
    for r in run.rows:
        if not r["variant"].startswith("fp8") and r["level_agree"] >= 0.999:
            if r["L"] not in best or r["ms"] < best[r["L"]]["ms"]:
                best[r["L"]] = r
    print("\nfastest bf16 variant per length (levels >= 99.9 % agreement):")
    for L, r in sorted(best.items()):
        print(f"  L={L:>6}: {r['variant']}  {r['ms']:.3f} ms  {r['tflops']:.0f} TFLOP/s  {r['share']:.1%} of cuDNN "
              f"({run.dense_ms[L]:.2f} ms)")
    if run.failed:
        print(f"\nfailed ({len(run.failed)}):\n  " + "\n  ".join(run.failed))
    if run.skipped:
        print(f"\nskipped past the {run.deadline:.0f} s deadline ({len(run.skipped)}): " + ", ".join(run.skipped))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(date=time.strftime("%Y-%m-%d %H:%M"), card=torch.cuda.get_device_name(), torch=torch.__version__,
                triton=__import__("triton").__version__, shape=dict(B=1, HQ=HQ, HKV=HKV, D=D, block=BLOCK, stride=STRIDE),
                args=dict(lengths=args.lengths, deadline=args.deadline, fp8=args.fp8), wall_s=time.time() - T0)
    args.out.write_text(json.dumps(dict(meta=meta, dense_ms=run.dense_ms, rows=run.rows,
                                        best={L: r["variant"] for L, r in best.items()},
                                        failed=run.failed, skipped=run.skipped), indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
