"""mean_pool_kv (k and v, 2x/4x/8x, one launch) against torch's one-line pooling, on one GPU.

    PYTHONPATH=. python3 benchmarks/bench_pooling.py [--lengths 32,64,128] [--out bench-out/pooling.json]

K/V shapes of Qwen2.5-VL-7B (4 KV heads) and 3B (2), D 128, bf16. Per shape: the kernel time
(`common.kernel_ms`: profiler records, calls back to back) of

- torch: `x.unflatten(-2, (-1, r)).mean(-2)` for r = 2, 4, 8 on k and on v (what the pools
  are when L is a multiple of 8; six reads of the input, eager kernels);
- mean_pool_kv: one launch that reads k and v once and writes all three ratios of both;

with the achieved bandwidth (bytes read + written once / time; the H200's HBM3e peaks at about
4.8 TB/s) and a bit-for-bit check against `mean_pool` on each tensor. Seconds on an H200.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import MODELS, kernel_ms

from qvl_kernels.pooling import mean_pool, mean_pool_kv


def torch_pools(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(x.unflatten(-2, (-1, r)).mean(-2) for r in (2, 4, 8))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="32,64,128", help="thousands of tokens (x1024)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/pooling.json"))
    args = ap.parse_args()
    rows = []
    print(f"{'model':>5} {'L':>7} {'torch us':>9} {'TB/s':>5} {'kv us':>7} {'TB/s':>5} {'speed-up':>8}  same bits")
    for model in ("7b", "3b"):
        _, hkv, d = MODELS[model]
        for lk in (int(x) for x in args.lengths.split(",")):
            L = lk * 1024
            g = torch.Generator(device="cuda").manual_seed(L)
            k = torch.randn(1, hkv, L, d, device="cuda", dtype=torch.bfloat16, generator=g)
            v = torch.randn(1, hkv, L, d, device="cuda", dtype=torch.bfloat16, generator=g)
            pk, pv = mean_pool_kv(k, v)
            same = all(torch.equal(a, b) for a, b in zip(pk + pv, mean_pool(k) + mean_pool(v)))
            t_torch = kernel_ms(lambda: (torch_pools(k), torch_pools(v)))
            t_kv = kernel_ms(lambda: mean_pool_kv(k, v))
            gb = 2 * k.numel() * k.element_size() * (1 + 1 / 2 + 1 / 4 + 1 / 8) / 1e9  # read once, write pools
            row = dict(model=model, L=L, torch_ms=t_torch, kv_ms=t_kv, gb=gb, same_bits=same)
            rows.append(row)
            print(
                f"{model:>5} {L:>7} {t_torch * 1e3:9.1f} {gb / t_torch:5.2f} {t_kv * 1e3:7.1f} {gb / t_kv:5.2f} "
                f"{t_torch / t_kv:7.2f}x  {same}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(card=torch.cuda.get_device_name(), torch=torch.__version__)
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
