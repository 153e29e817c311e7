"""Dense (all level 1) pyramid-attention kernel variants against cuDNN SDPA, same run, same card.

    PYTHONPATH=. python3 benchmarks/experiments/variants_attention.py [--lengths 16,32,64] [--out bench-out/variants_attention.json]

Variants: Triton tile configs (BMxBNxWARPSxSTAGES; the softmax variants measured with it, a
polynomial exp2 on the FMA pipes and FA3's GEMM order, were dropped: docs/psa-kernels.md) and
the Gluon Hopper kernel with 2 or 3 K/V stages (`gluon2`, `gluon3`). 7B attention shape (HQ 28, HKV 4, D 128), bf16, causal,
video-like inputs from common.py. Also times each variant on a fixed pyramid mask of density ~0.1 and on low-density masks.
Prints a table and writes JSON; the chosen defaults go into `_keep` in pyramid_attention/triton.py
and the `stages` default of hopper.py.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common.py
from common import (  # noqa: E402
    BLOCK,
    dense_causal_flops,
    fixed_levels,
    level_density,
    rel_err,
    sdpa,
    timed,
    video_inputs,
    write_results,
)

from qvl_kernels.pooling import mean_pool  # noqa: E402
from qvl_kernels.pyramid_attention import (  # noqa: E402
    build_block_lists,  # noqa: E402
    hopper,
    pyramid_attention_triton,
)

HQ, HKV, D = 28, 4, 128


def _variant(q, k, v, lev, lists, pooled, cfg):
    if isinstance(cfg, str):  # gluonN: the Gluon Hopper kernel with N K/V stages
        stages = int(cfg[len("gluon") :])
        return hopper.pyramid_attention_hopper(q, k, v, pooled, lists, True, q.shape[-1] ** -0.5, stages=stages)
    return pyramid_attention_triton(q, k, v, lev, block=BLOCK, pooled=pooled, lists=lists, config=cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="16,32,64", help="thousands of tokens (x1024)")
    ap.add_argument("--configs", default="128x128x8x3,gluon2,gluon3", help="BMxBNxWARPSxSTAGES or gluonN,...")
    ap.add_argument("--deadline", type=float, default=240.0, help="seconds; later variants are skipped")
    ap.add_argument("--out", type=Path, default=Path("bench-out/variants_attention.json"))
    args = ap.parse_args()
    t0 = time.time()
    configs = [
        c
        if c.startswith("gluon")
        else dict(zip(("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"), map(int, c.split("x"))))
        for c in args.configs.split(",")
    ]
    rows = []
    for Lk in map(int, args.lengths.split(",")):
        L = Lk * 1024
        q, k, v = video_inputs(1, HQ, HKV, L, D, seed=L)
        fl = dense_causal_flops(1, HQ, L, D)
        nb = math.ceil(L / BLOCK)
        ref = sdpa("cudnn")(q, k, v)
        t_c = timed(lambda: sdpa("cudnn")(q, k, v))
        rows.append(dict(L=L, variant="sdpa-cudnn", ms=t_c, tflops=fl / t_c / 1e9))
        ones = torch.ones(1, HQ, nb, nb, dtype=torch.int8, device="cuda")
        lists1 = build_block_lists(ones, True)
        lev10 = fixed_levels(1, HQ, L, 0.1, True, seed=2)
        lists10 = build_block_lists(lev10, True)
        d10 = level_density(lev10)
        pooled = (*mean_pool(k), *mean_pool(v))
        t1_first = None  # all-level-1 time of the first variant: the bound's reference
        for cfg in configs:
            name = cfg if isinstance(cfg, str) else "{BLOCK_M}x{BLOCK_N}w{num_warps}s{num_stages}".format(**cfg)
            if time.time() - t0 > args.deadline:
                print(f"deadline: skipped {name} at {L}", file=sys.stderr)
                continue
            try:

                def run(lev=ones, lists=lists1, cfg=cfg):
                    return _variant(q, k, v, lev, lists, pooled, cfg)

                out = run()
                err = rel_err(out, ref)
                t1 = timed(run)
                t1_first = t1_first or t1
                t10 = timed(lambda: run(lev10, lists10))
                rows.append(
                    dict(
                        L=L,
                        variant=name,
                        ms=t1,
                        tflops=fl / t1 / 1e9,
                        x_cudnn=t_c / t1,
                        err=err,
                        pyr10_ms=t10,
                        pyr10_density=d10,
                        pyr10_bound_ms=1.25 * d10 * t1 + 0.1,
                    )
                )
            except Exception as e:  # a variant that does not compile or fit: one line, go on
                print(f"{name} at {L}: {type(e).__name__}: {str(e).splitlines()[0][:200]}", file=sys.stderr)
            print(rows[-1], file=sys.stderr, flush=True)
        # Low density: where do the per-tile fixed costs go? Diagonal + sink only, and binary d~0.1,
        # with TMA descriptors built on the device (two per level loop per program) or plain loads.
        diag = fixed_levels(1, HQ, L, 0.0, False, seed=3)
        bin10 = fixed_levels(1, HQ, L, 0.1, False, seed=4)
        for lname, lev in (("diag+sink", diag), ("binary d~0.1", bin10)) if t1_first else ():
            lists = build_block_lists(lev, True)
            dd = level_density(lev)
            for cfg in configs:
                name = cfg if isinstance(cfg, str) else "triton"
                t = timed(lambda: _variant(q, k, v, lev, lists, pooled, cfg))
                rows.append(
                    dict(
                        L=L,
                        variant=f"{lname} {name}",
                        ms=t,
                        tflops=dd * fl / t / 1e9,
                        density=dd,
                        bound_ms=1.25 * dd * t1_first + 0.1,
                    )
                )
                print(rows[-1], file=sys.stderr, flush=True)
        del q, k, v, ref, ones, lists1, lev10, lists10, pooled
        torch.cuda.empty_cache()
    print(f"{'L':>7} {'variant':<32} {'ms':>8} {'TF/s':>6} {'x cuDNN':>8} {'err':>8} {'pyr d~0.1 ms':>12} {'bound':>7}")
    for r in rows:
        print(
            f"{r['L']:>7} {r['variant']:<32} {r['ms']:>8.3f} {r['tflops']:>6.0f} {r.get('x_cudnn', 1):>8.3f} "
            f"{r.get('err', 0):>8.1e} {r.get('pyr10_ms', 0):>12.3f} {r.get('pyr10_bound_ms', r.get('bound_ms', 0)):>7.3f}"
        )
    write_results(args.out, rows)


if __name__ == "__main__":
    main()
