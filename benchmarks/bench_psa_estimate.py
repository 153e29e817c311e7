"""PSA's estimation stage on its own, and the pipeline targets, timed two ways against cuDNN.

    PYTHONPATH=. python3 benchmarks/bench_psa_estimate.py [--models 7b,3b] [--lengths 32,64]
        [--out bench-out/estimate.json]

bf16, causal, video-like inputs (the same as bench_psa.py). Every time is taken twice:

- isolated: one call on an idle GPU, events around it (`timed`, as in bench_psa.py), so it
  includes the Python launch overhead of every kernel the call starts;
- queued: the same call with the CPU running ahead of the GPU, as in a model's forward pass
  (`timed_queued`: a busy-wait kernel first, so the events see GPU work only), with the host's
  enqueue time next to it.

Rows: the estimate (`psa_levels`: importance + similarity cap + level mask, the fp8 importance
by default on Hopper from 32K) and its parts for the `fast` and `default` presets; and the whole
pipeline (`psa_attention`) at the issue's budgets: topk 10% (at 64K) and 35% (at 32K), the bands
calibrated on these inputs as in bench_psa.py. cuDNN dense attention is timed the same two ways
in the same run. Targets (issue 4): estimate <= 8% of dense for L >= 32K; pipeline >= 6x dense at
10% and 64K, >= 2.2x at 35% and 32K.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from common import MODELS, calibrated_topk, timed, timed_queued, video_inputs, write_results

from qvl_kernels import PSAConfig, block_importance, level_mask, similarity_cap
from qvl_kernels.psa import importance_uses_fp8, psa_attention, psa_levels

D, BLOCK = 128, 128
PIPELINE_TARGETS = {65536: (0.10, "fast", 6.0), 32768: (0.35, "balanced", 2.2)}  # L: (density, bands, x dense)


def line(r: dict) -> str:
    """One row of the table (ms; the estimate's share of dense or the pipeline's speed-up)."""
    vs = ""
    if "share_isolated" in r:
        vs = f"{r['share_isolated']:.1%} / {r['share_queued']:.1%}"
    elif "speedup_isolated" in r:
        vs = f"x{r['speedup_isolated']:.2f} / x{r['speedup_queued']:.2f} (d={r['density']:.3f}, target x{r['target']})"
    return (
        f"{r['model']:<5} {r['L']:>6} {r['what']:<26} {r['isolated_ms']:>9.3f} {r['queued_ms']:>9.3f} "
        f"{r['host_ms']:>8.3f}  {vs}"
    )


def both(fn) -> dict:
    iso = timed(fn)
    gpu, host = timed_queued(fn)
    return dict(isolated_ms=iso, queued_ms=gpu, host_ms=host)


def ratios(name: str, numerator: dict, denominator: dict) -> dict:
    """`name`_isolated and `name`_queued: one `both` timing over another, each way of timing."""
    return {f"{name}_{way}": numerator[f"{way}_ms"] / denominator[f"{way}_ms"] for way in ("isolated", "queued")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="7b,3b")
    parser.add_argument("--lengths", default="32,64", help="thousands of tokens (x1024)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/estimate.json"))
    args = parser.parse_args()
    rows = []

    def show(r):
        rows.append(r)
        print(line(r), file=sys.stderr, flush=True)

    for model in args.models.split(","):
        HQ, HKV = MODELS[model][:2]
        for L in (int(x) * 1024 for x in args.lengths.split(",")):
            q, k, v = video_inputs(1, HQ, HKV, L, D, seed=L)
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
                dense = both(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
            base = dict(model=model, L=L)
            show(dict(base, what="cuDNN dense", **dense))
            for preset in ("fast", "default"):
                cfg = PSAConfig.preset(preset)
                fp8 = importance_uses_fp8(cfg, q)
                est = both(lambda: psa_levels(q, k, cfg))
                show(
                    dict(
                        base,
                        what=f"estimate {preset}",
                        preset=preset,
                        fp8=fp8,
                        **est,
                        **ratios("share", est, dense),
                    )
                )
                scores = block_importance(q, k, block=BLOCK, stride=cfg.stride, fp8=fp8)
                cap = similarity_cap(k, block=BLOCK, thresholds=cfg.thresholds)
                parts = {
                    "importance" + (" (fp8)" if fp8 else ""): lambda: block_importance(
                        q, k, block=BLOCK, stride=cfg.stride, fp8=fp8
                    ),
                    "cap": lambda: similarity_cap(k, block=BLOCK, thresholds=cfg.thresholds),
                    "mask": lambda: level_mask(
                        scores, cap, mode=cfg.mode, ratios=cfg.ratios, text_blocks=cfg.text_blocks
                    ),
                }
                for name, fn in parts.items():
                    show(dict(base, what=f"  {name}", preset=preset, **both(fn)))
            if L in PIPELINE_TARGETS:
                target_d, shape, target_x = PIPELINE_TARGETS[L]
                cfg, achieved = calibrated_topk(q, k, target_d, shape)
                pipe = both(lambda: psa_attention(q, k, v, cfg))
                show(
                    dict(
                        base,
                        what=f"pipeline topk {target_d:.0%}",
                        density=achieved,
                        target=target_x,
                        **pipe,
                        **ratios("speedup", dense, pipe),
                    )
                )
            del q, k, v
            torch.cuda.empty_cache()
    write_results(args.out, rows)
    # The table on stdout (the data); progress went to stderr row by row.
    print(f"{'model':<5} {'L':>6} {'what':<26} {'isolated':>9} {'queued':>9} {'host':>8}  vs dense (isolated / queued)")
    for r in rows:
        print(line(r))


if __name__ == "__main__":
    main()
