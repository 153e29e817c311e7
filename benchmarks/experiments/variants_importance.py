"""The xattn block-importance variants that matter, bf16 and fp8, on one GPU, against cuDNN dense attention.

    PYTHONPATH=. python3 benchmarks/experiments/variants_importance.py [--lengths 16,32,64] [--deadline 110]
        [--no-fp8] [--out bench-out/variants_importance.json]

7B attention shape (B 1, HQ 28, HKV 4, D 128), bf16, block 128, stride 8, causal, video-like
inputs from common.video_inputs. Per length: cuDNN SDPA dense causal attention, then

- the pre-TMA default (pointer path, 128x128x128 w8 s3), first: the reference of the checks;
- the measured bf16 winners on the TMA path (128x256x64 w8 s4 and s3, 128x128x64 w8 s4), each
  launched with an explicit config, and the public block_importance() (from 2048 strided rows
  up one config, launched without the autotuner: 128x256x64 w8 s3 below 4096 strided rows, s4
  from there);
- fp8 (unless --no-fp8): quantize_fp8() alone (q per strided row in one pass, k per head), the
  xattn kernel alone on its fp8 copies with two configs ("kernel"), and the public
  block_importance(..., fp8=True) with the quantization included, which is what users pay;
- psa_levels() with PSAConfig() (importance + similarity cap + level mask: what the issue's
  "<= 8 % of cuDNN dense" target covers), bf16 and fp8 importance.

Per row: median ms (CUDA events), TFLOP/s of the stride-s GEMM (2 * HQ * s*D * Ls(Ls+1)/2, Ls =
L / s), share of cuDNN dense attention, max |S - S_ref|, and the share of visible (query block,
key block) entries whose level (level_mask_triton, top-k bands 1: 0-10 %, 2: 10-20 %, 0: rest)
equals the reference's; psa_levels rows: the share of visible blocks whose level equals the bf16
psa_levels() one. A variant that fails to compile or launch prints one line and is skipped; work
left at --deadline seconds is skipped and listed. Writes every number to --out (also when a run
stops early). About a minute on an H200.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common.py
from common import timed, video_inputs  # noqa: E402  (same timing and inputs as the main benchmark)

from qvl_kernels.block_importance import block_importance  # noqa: E402
from qvl_kernels.block_importance.quantize import quantize_fp8  # noqa: E402
from qvl_kernels.level_mask import level_mask_triton  # noqa: E402
from qvl_kernels.psa import PSAConfig, psa_levels  # noqa: E402

bi = importlib.import_module("qvl_kernels.block_importance.triton")  # the module (the package's
# attribute of that name is the function)

HQ, HKV, D, BLOCK, STRIDE = 28, 4, 128, 128, 8
RATIOS = {1: (0.0, 0.1), 2: (0.1, 0.2), 0: (0.2, 1.0)}
BASELINE = ("pointer", (128, 128, 128, 8, 3, True))  # the default before TMA: reference of the checks
BF16 = [("tma", (128, 256, 64, 8, 4, True)), ("tma", (128, 256, 64, 8, 3, True)), ("tma", (128, 128, 64, 8, 4, True))]
FP8_CONFIGS = [(128, 256, 128, 8, 3, True), (128, 256, 64, 8, 4, True)]
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def gemm_flops(L: int) -> float:
    ls = math.ceil(L / STRIDE)
    return 2.0 * HQ * (STRIDE * D) * ls * (ls + 1) / 2


def name(path: str, cfg: tuple) -> str:
    bm, bn, bk, w, s, flat = cfg
    return f"{path} {bm}x{bn}x{bk} w{w} s{s}" + ("" if flat else " nested")


def parse_configs(text: str) -> list[tuple]:
    """ "128x256x128w8s4,..." -> [(128, 256, 128, 8, 4, True), ...] (flat loop)."""
    out = []
    for item in text.split(","):
        m = re.fullmatch(r"(\d+)x(\d+)x(\d+)w(\d+)s(\d+)", item.strip())
        if not m:
            raise argparse.ArgumentTypeError(f"not a config: {item!r} (expected e.g. 128x256x128w8s4)")
        out.append(tuple(int(g) for g in m.groups()) + (True,))
    return out


def launch_config(cfg: tuple) -> dict:
    bm, bn, bk, w, s, flat = cfg
    return dict(BM=bm, BN=bn, BK=bk, FLAT=flat, num_warps=w, num_stages=s)


def levels(scores: torch.Tensor) -> torch.Tensor:
    return level_mask_triton(scores, None, mode="topk", ratios=RATIOS)


def fp8_inputs(q, k):
    """(q8, k8, row_scale) as block_importance(fp8=True) makes them: the quantization (q per
    strided row, k per head) and the two scale tensors the kernel folds into the scores."""
    q8, k8, sq, sk = quantize_fp8(q, k, stride=STRIDE)
    return q8, k8, (sq, sk)


class Run:
    """Inputs, the cuDNN time and the reference scores and levels of every length; rows of results."""

    def __init__(self, lengths, deadline):
        self.lengths, self.deadline = lengths, deadline
        self.inputs, self.dense_ms, self.ref, self.ref_levels, self.ref_psa = {}, {}, {}, {}, {}
        self.rows, self.skipped, self.failed = [], [], []

    def late(self) -> bool:
        return time.time() - T0 > self.deadline

    def setup(self, L: int) -> None:
        q, k, v = video_inputs(1, HQ, HKV, L, D, seed=L)
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            self.dense_ms[L] = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
        self.inputs[L] = (q, k)
        log(f"L={L}: cuDNN dense causal {self.dense_ms[L]:.2f} ms")

    def _time(self, label: str, L: int, fn):
        """(ms, result of the first call) or None when it fails or it is late."""
        if self.late():
            self.skipped.append(f"{label} L={L}")
            return None
        try:
            res = fn()  # compiles on the first call
            torch.cuda.synchronize()
            return timed(fn), res
        except Exception as e:  # compile errors, out of shared memory, launch failures
            msg = f"{label}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            if "CUDA error" in str(e) or "illegal" in str(e).lower():
                raise  # the context is gone: stop (the JSON written so far stays)
            log(f"FAILED {msg}")
            self.failed.append(msg)
            return None

    def _row(self, label: str, L: int, ms: float, max_diff=None, level_agree=None, gemm=True) -> dict:
        """One result; gemm: TFLOP/s of the xattn GEMM (not for the quantization or psa_levels)."""
        row = dict(
            variant=label,
            L=L,
            ms=ms,
            tflops=gemm_flops(L) / ms / 1e9 if gemm else None,
            share=ms / self.dense_ms[L],
            max_diff=max_diff,
            level_agree=level_agree,
        )
        self.rows.append(row)
        tflops = f"{row['tflops']:6.0f} TFLOP/s" if gemm else " " * 14
        checks = "" if level_agree is None else f"levels {level_agree:.4%}"
        if max_diff is not None:
            checks = f"max|dS| {max_diff:.2e} " + checks
        log(f"{label:<40} L={L:>6} {ms:8.3f} ms {tflops} {row['share']:6.1%} of dense {checks}")
        return row

    def measure(self, label: str, L: int, fn) -> dict | None:
        """Time fn(out) (xattn scores into out) at length L and check it against the reference."""
        q, _ = self.inputs[L]
        nb = math.ceil(L / BLOCK)
        out = torch.empty(1, HQ, nb, nb, device=q.device, dtype=torch.float32)
        timing = self._time(label, L, lambda: fn(out))
        if timing is None:
            return None
        if L not in self.ref:  # the first variant is the reference
            self.ref[L], self.ref_levels[L] = out.clone(), levels(out)
        vis = torch.ones(nb, nb, dtype=torch.bool, device=q.device).tril()
        agree = (levels(out) == self.ref_levels[L])[..., vis].float().mean().item()
        return self._row(label, L, timing[0], (out - self.ref[L]).abs().max().item(), agree)

    def measure_levels(self, label: str, L: int, config: PSAConfig) -> dict | None:
        """Time psa_levels (importance + cap + level mask); levels against the bf16 ones."""
        q, k = self.inputs[L]
        timing = self._time(label, L, lambda: psa_levels(q, k, config))
        if timing is None:
            return None
        lev = timing[1]
        if L not in self.ref_psa:
            self.ref_psa[L] = lev
        nb = lev.shape[-1]
        vis = torch.ones(nb, nb, dtype=torch.bool, device=q.device).tril()
        agree = (lev == self.ref_psa[L])[..., vis].float().mean().item()
        return self._row(label, L, timing[0], None, agree, gemm=False)


def variants(run: Run, todo) -> None:
    """Each (path, config) at every length, variants outside: a failed or late one is dropped whole."""
    for path, cfg in todo:
        for L in run.lengths:
            q, k = run.inputs[L]
            row = run.measure(
                name(path, cfg),
                L,
                lambda out, q=q, k=k: bi._xattn(
                    q, k, BLOCK, STRIDE, True, out, tma=path == "tma", config=launch_config(cfg)
                ),
            )
            if row is None:
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16,32,64", help="thousands of tokens (x1024), comma-separated")
    parser.add_argument(
        "--deadline",
        type=float,
        default=110.0,
        help="seconds from the start after which remaining work is skipped (default 110)",
    )
    parser.add_argument("--no-fp8", dest="fp8", action="store_false", help="skip the fp8 rows")
    parser.add_argument(
        "--no-bf16",
        dest="bf16",
        action="store_false",
        help="skip the bf16 rows (the first fp8 kernel row is then the reference of the checks)",
    )
    parser.add_argument(
        "--fp8-configs",
        type=parse_configs,
        default=FP8_CONFIGS,
        help="fp8 kernel configs, comma-separated BMxBNxBK w S (e.g. 128x256x128w8s4); "
        "default: " + ",".join(f"{c[0]}x{c[1]}x{c[2]}w{c[3]}s{c[4]}" for c in FP8_CONFIGS),
    )
    parser.add_argument("--out", type=Path, default=Path("bench-out/variants_importance.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("variants_importance.py needs a CUDA GPU")

    lengths = [int(x) * 1024 for x in args.lengths.split(",")]
    run = Run(lengths, args.deadline)
    try:
        for L in lengths:
            run.setup(L)
        q0, k0 = run.inputs[lengths[0]]
        assert bi._tma_layout_ok(q0, k0), "the inputs should allow TMA loads"
        if args.bf16:
            variants(run, [BASELINE] + BF16)
            for L in lengths:  # what users get
                q, k = run.inputs[L]
                run.measure(
                    "block_importance() as called",
                    L,
                    lambda out, q=q, k=k: block_importance(q, k, block=BLOCK, stride=STRIDE, out=out),
                )
            pick = getattr(bi._xattn_kernel_tuned, "best_config", None) or "none (one config: launched directly)"
            log(f"autotuner's pick (last length): {pick}")
        if args.fp8:
            for L in lengths:
                q, k = run.inputs[L]
                timing = run._time("quantize_fp8()", L, lambda q=q, k=k: quantize_fp8(q, k, stride=STRIDE))
                if timing is not None:
                    run._row("fp8 quantize_fp8() alone", L, timing[0], gemm=False)
            for cfg in args.fp8_configs:
                for L in lengths:
                    q8, k8, hs = fp8_inputs(*run.inputs[L])
                    if (
                        run.measure(
                            "fp8 " + name("tma", cfg) + " kernel",
                            L,
                            lambda out, q8=q8, k8=k8, hs=hs, cfg=cfg: bi._xattn(
                                q8, k8, BLOCK, STRIDE, True, out, tma=True, config=launch_config(cfg), row_scale=hs
                            ),
                        )
                        is None
                    ):
                        break
            for L in lengths:
                q, k = run.inputs[L]
                run.measure(
                    "fp8 block_importance(fp8=True)",
                    L,
                    lambda out, q=q, k=k: block_importance(q, k, block=BLOCK, stride=STRIDE, out=out, fp8=True),
                )
        for fp8 in [fp8 for fp8, wanted in ((False, args.bf16), (True, args.fp8)) if wanted]:
            for L in lengths:
                run.measure_levels(
                    f"psa_levels() {'fp8' if fp8 else 'bf16'} importance",
                    L,
                    PSAConfig(block=BLOCK, stride=STRIDE, importance_fp8=fp8),
                )
    finally:
        report(run, args)


def report(run: Run, args) -> None:
    print(f"\n{'variant':<40} {'L':>6} {'ms':>8} {'TFLOP/s':>8} {'dense':>7} {'max|dS|':>9} {'levels':>9}")
    for r in sorted(run.rows, key=lambda r: (r["L"], r["ms"])):
        tflops = "" if r["tflops"] is None else f"{r['tflops']:.0f}"
        diff = "" if r["max_diff"] is None else f"{r['max_diff']:.2e}"
        agree = "" if r["level_agree"] is None else f"{r['level_agree']:.4%}"
        print(f"{r['variant']:<40} {r['L']:>6} {r['ms']:>8.3f} {tflops:>8} {r['share']:>7.1%} {diff:>9} {agree:>9}")
    best = {}
    for r in run.rows:
        if r["variant"].startswith(("pointer", "tma", "block_importance")) and r["level_agree"] >= 0.999:
            if r["L"] not in best or r["ms"] < best[r["L"]]["ms"]:
                best[r["L"]] = r
    print("\nfastest bf16 variant per length (levels >= 99.9 % agreement):")
    for L, r in sorted(best.items()):
        print(
            f"  L={L:>6}: {r['variant']}  {r['ms']:.3f} ms  {r['tflops']:.0f} TFLOP/s  {r['share']:.1%} of cuDNN "
            f"({run.dense_ms[L]:.2f} ms)"
        )
    pipeline = [r for r in run.rows if r["variant"].startswith("psa_levels")]
    if pipeline:
        print("\nimportance + similarity cap + level mask (psa_levels, PSAConfig()) vs the 8 % target:")
        for r in sorted(pipeline, key=lambda r: (r["L"], r["variant"])):
            print(
                f"  L={r['L']:>6}: {r['variant']:<28} {r['ms']:.3f} ms  {r['share']:.1%} of cuDNN  "
                f"levels as bf16: {r['level_agree']:.4%}"
            )
    if run.failed:
        print(f"\nfailed ({len(run.failed)}):\n  " + "\n  ".join(run.failed))
    if run.skipped:
        print(f"\nskipped past the {run.deadline:.0f} s deadline ({len(run.skipped)}): " + ", ".join(run.skipped))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        date=time.strftime("%Y-%m-%d %H:%M"),
        card=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=__import__("triton").__version__,
        shape=dict(B=1, HQ=HQ, HKV=HKV, D=D, block=BLOCK, stride=STRIDE),
        args=dict(lengths=args.lengths, deadline=args.deadline, fp8=args.fp8),
        wall_s=time.time() - T0,
    )
    args.out.write_text(
        json.dumps(
            dict(
                meta=meta,
                dense_ms=run.dense_ms,
                rows=run.rows,
                best={L: r["variant"] for L, r in best.items()},
                failed=run.failed,
                skipped=run.skipped,
            ),
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
