"""What the first PSA call at a new sequence length costs in a process, and where: each length
timed on its first call and again, with Triton's autotuning reports on (TRITON_PRINT_AUTOTUNING)
and every kernel compilation counted through Triton's post-compile hook.

    PYTHONPATH=. python3 benchmarks/experiments/psa_first_calls.py [--lengths 32820,65588,131124] [--preset fast]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TRITON_PRINT_AUTOTUNING", "1")

import torch  # noqa: E402
import triton  # noqa: E402

COMPILED: list[str] = []


def _count(*args, **kwargs):
    key = kwargs.get("fn") or (args[0] if args else None)
    COMPILED.append(getattr(getattr(key, "fn", key), "__name__", str(key)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="32820,65588,131124")
    parser.add_argument("--preset", default="fast")
    args = parser.parse_args()
    try:
        triton.knobs.runtime.jit_post_compile_hook = _count
    except AttributeError:
        print("this Triton has no jit_post_compile_hook: compilations not counted")
    from qvl_kernels.psa import PSAConfig, psa_attention

    config = PSAConfig.preset(args.preset, similarity_cap=False)
    for length in (int(n) for n in args.lengths.split(",")):
        q = torch.randn(1, 28, length, 128, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(1, 4, length, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        for call in ("first", "second"):
            COMPILED.clear()
            torch.cuda.synchronize()
            started = time.perf_counter()
            psa_attention(q, k, v, config.with_(text_length=26))
            torch.cuda.synchronize()
            took = time.perf_counter() - started
            print(
                f"L={length:>7} {call:<6} {took:>7.3f} s, {len(COMPILED)} compiled: {sorted(set(COMPILED))}", flush=True
            )
        del q, k, v


if __name__ == "__main__":
    main()
