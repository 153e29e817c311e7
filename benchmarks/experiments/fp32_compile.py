"""How long the portable pyramid-attention kernel takes to compile in fp32, config by config, and
what the blocked PyTorch path costs instead: the data for choosing fp32's launch on a GPU, where
the compiled fp32 kernel tests did not finish within minutes (docs/benchmarks.md).

    PYTHONPATH=. python3 benchmarks/experiments/fp32_compile.py [--dims 64,80,128] [--limit 120]
        [--jobs 8] [--out bench-out/fp32-compile.json]

Each (config, head_dim, tma) launch runs in a fresh process under a time limit, `--jobs` at once,
so one that compiles for minutes does not hold up the others (their times include the others'
compiling beside them): its first call (compile + run) on a causal
L=300 input with random levels, then its largest difference from `naive.pyramid_attention`. Then
the blocked PyTorch path (`blocked.pyramid_attention_blocked`), which needs no compiler, at
L=8,192 and 32,768 (fp32, 28 query heads over 4 KV heads, head_dim 128).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import write_results  # noqa: E402

CONFIGS = (
    {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3},  # the bf16 choice
    {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 1},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
)

ONE_LAUNCH = """
import json, sys, time, torch
from qvl_kernels.pyramid_attention import naive
from qvl_kernels.pyramid_attention.triton import pyramid_attention_triton
config, D, tma = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
g = torch.Generator(device="cuda").manual_seed(0)
L, nb = 300, 3
q = torch.randn(1, 2, L, D, device="cuda", generator=g)
k, v = (torch.randn(1, 1, L, D, device="cuda", generator=g) for _ in range(2))
choices = torch.tensor([0, 1, 2, 4, 8], device="cuda")
levels = choices[torch.randint(0, 5, (1, 2, nb, nb), device="cuda", generator=g)].to(torch.int8)
levels[..., torch.arange(nb), torch.arange(nb)] = 1
torch.cuda.synchronize()
started = time.perf_counter()
out = pyramid_attention_triton(q, k, v, levels, config=config, tma=tma)
torch.cuda.synchronize()
first = time.perf_counter() - started
error = (out - naive.pyramid_attention(q, k, v, levels)).abs().max().item()
print(json.dumps({"first_call_s": round(first, 2), "max_abs_error": error}))
"""


def launch_row(config: dict, dim: int, tma: bool, limit: float) -> dict:
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", ONE_LAUNCH, json.dumps(config), str(dim), "1" if tma else "0"],
            capture_output=True,
            text=True,
            timeout=limit,
        )
    except subprocess.TimeoutExpired:
        return {"outcome": f"not done in {limit:.0f} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"outcome": last[:100], "wall_s": round(time.perf_counter() - started, 1)}
    return {"outcome": "ran", **json.loads(done.stdout.strip().splitlines()[-1])}


def blocked_rows() -> list[dict]:
    import torch

    from qvl_kernels.pyramid_attention.blocked import pyramid_attention_blocked

    rows = []
    for length in (8192, 32768):
        nb = -(-length // 128)
        q = torch.randn(1, 28, length, 128, device="cuda")
        k, v = (torch.randn(1, 4, length, 128, device="cuda") for _ in range(2))
        levels = torch.ones(1, 28, nb, nb, dtype=torch.int8, device="cuda")
        for call in ("first", "second"):
            torch.cuda.synchronize()
            started = time.perf_counter()
            pyramid_attention_blocked(q, k, v, levels)
            torch.cuda.synchronize()
            rows.append({"L": length, "call": call, "s": round(time.perf_counter() - started, 3)})
        del q, k, v, levels
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="64,80,128")
    parser.add_argument("--limit", type=float, default=120.0, help="seconds each launch may take")
    parser.add_argument("--jobs", type=int, default=8, help="launches compiling at once")
    parser.add_argument("--out", default="bench-out/fp32-compile.json")
    args = parser.parse_args()

    cases = [
        (config, dim, tma) for dim in map(int, args.dims.split(",")) for config in CONFIGS for tma in (True, False)
    ]
    with ThreadPoolExecutor(args.jobs) as pool:  # each case compiles in a process of its own
        outcomes = pool.map(lambda case: launch_row(*case, args.limit), cases)
        rows = [{"config": c, "D": d, "tma": t, **outcome} for (c, d, t), outcome in zip(cases, outcomes)]
    print(f"{'config':<28} {'D':>4} {'tma':>5}  outcome")
    for row in rows:
        name = "{BLOCK_M}x{BLOCK_N} w{num_warps} s{num_stages}".format(**row["config"])
        detail = (
            f"first call {row['first_call_s']} s, max |error| {row['max_abs_error']:.1e}"
            if row["outcome"] == "ran"
            else row["outcome"]
        )
        print(f"{name:<28} {row['D']:>4} {row['tma']!s:>5}  {detail}", flush=True)
    blocked = blocked_rows()
    for row in blocked:
        print(f"blocked PyTorch path, fp32, L={row['L']:,} ({row['call']} call): {row['s']} s", flush=True)
    write_results(
        Path(args.out), [{"path": "kernel", **row} for row in rows] + [{"path": "blocked", **row} for row in blocked]
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
