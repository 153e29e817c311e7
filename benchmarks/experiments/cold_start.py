"""Where a fresh process's time goes before and during its first request.

    PYTHONPATH=. python3 benchmarks/experiments/cold_start.py [--model random:7b] [--frames 64]

1. Imports, each in a fresh interpreter, median of 2: `import torch`, transformers' Qwen2.5-VL
   classes, the processor classes, `qvl.engine`; once with the environment as it is and once with
   a writable bytecode cache (`PYTHONPYCACHEPREFIX`, filled by a first run), which is what an
   installed package has where the image was built with PYTHONDONTWRITEBYTECODE.
2. First calls in one fresh process, in the order a request meets them: CUDA context, a bf16
   matrix product (cuBLAS handles), flash attention, Triton's import and each of the fast path's
   Triton kernels (rms_norm, rotary_qk, silu_mul, decode_attention) on its first call, then the
   model's load, the processor, and the vision tower's first and second call.
3. Would a tiny request made right after the load take the first request's one-time costs? Two
   fresh processes: `Engine(model)`, then the real request (`--frames`, 32 tokens) twice; and the
   same with a 2-frame 56x56 request of one token in between, timed on its own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

IMPORTS = {
    "torch": "import torch",
    "transformers processor": "from transformers import AutoProcessor; import transformers.models.qwen2_5_vl.processing_qwen2_5_vl",
    "qvl.engine + model": "import qvl.engine.load, qvl.engine.generate; from transformers import Qwen2_5_VLForConditionalGeneration",
}


def import_seconds(statement: str, env: dict) -> float:
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    times = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        times.append(float(out.stdout.split()[-1]))
    return statistics.median(times)


def imports() -> None:
    plain = dict(os.environ)
    cached = dict(os.environ, PYTHONPYCACHEPREFIX=tempfile.mkdtemp(prefix="pyc-"))
    cached.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-c", "; ".join(IMPORTS.values())], env=cached, check=True, capture_output=True)
    print(f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE')!r}")
    print(f"{'import':<26} {'as is s':>8} {'bytecode cached s':>18}")
    for name, statement in IMPORTS.items():
        print(
            f"{name:<26} {import_seconds(statement, plain):>8.2f} {import_seconds(statement, cached):>18.2f}",
            flush=True,
        )


def first_calls(model: str, frames: int) -> None:
    started = time.perf_counter()

    def mark(label: str) -> None:
        nonlocal started
        torch.cuda.synchronize()
        now = time.perf_counter()
        print(f"{label:<40} {now - started:>8.3f} s", flush=True)
        started = now

    import torch
    import torch.nn.functional as F

    mark("import torch")
    torch.cuda.init()
    x = torch.randn(4096, 1280, device="cuda", dtype=torch.bfloat16)
    mark("CUDA context + first tensor")
    w = torch.randn(3420, 1280, device="cuda", dtype=torch.bfloat16)
    F.linear(x, w)
    mark("first bf16 matrix product")
    F.linear(x, torch.randn(1280, 1280, device="cuda", dtype=torch.bfloat16))
    mark("second shape")
    q = torch.randn(64, 16, 64, 80, device="cuda", dtype=torch.bfloat16)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        F.scaled_dot_product_attention(q, q, q)
    mark("first flash attention (head_dim 80)")
    import triton  # noqa: F401

    mark("import triton")
    from qvl_kernels.decode_attention import decode_attention
    from qvl_kernels.rms_norm import rms_norm
    from qvl_kernels.rotary import rotary_qk
    from qvl_kernels.silu_mul import silu_mul

    mark("import the fast path's kernels")
    norm_weight = torch.ones(1280, device="cuda", dtype=torch.bfloat16)
    rms_norm(x, norm_weight, 1e-6)
    mark("first Triton kernel: rms_norm (cache warm?)")
    rms_norm(x, norm_weight, 1e-6, x)
    mark("rms_norm with a residual (another specialisation)")
    rms_norm(x, norm_weight, 1e-6)
    mark("rms_norm again")
    heads = torch.randn(4096, 16, 80, device="cuda", dtype=torch.bfloat16)
    angles = torch.randn(4096, 80, device="cuda", dtype=torch.bfloat16)
    rotary_qk(heads, heads, angles.cos(), angles.sin())
    mark("first rotary_qk")
    silu_mul(x, x)
    mark("first silu_mul")
    cache = torch.randn(1, 4, 1024, 128, device="cuda", dtype=torch.bfloat16)
    decode_attention(
        torch.randn(1, 28, 128, device="cuda", dtype=torch.bfloat16),
        cache,
        cache,
        torch.tensor([1000], device="cuda", dtype=torch.int32),
    )
    mark("first decode_attention")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from common import synthetic_video

    from qvl.engine import Engine, Request
    from qvl.engine.vision import run_tower

    mark("import qvl.engine")
    engine = Engine(model)
    mark(f"Engine({model})")
    inputs = engine.prepare(Request("x", video=synthetic_video(frames)))
    mark(f"processor, {frames} frames (first)")
    inputs = engine.prepare(Request("x", video=synthetic_video(frames)))
    mark(f"processor, {frames} frames (second)")
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.runcall(lambda: (engine.prepare(Request("x", video=synthetic_video(frames))), torch.cuda.synchronize()))
    pstats.Stats(profile).sort_stats("tottime").print_stats(12)
    mark("processor under cProfile")
    visual, pixels, grid = engine.model.model.visual, inputs["pixel_values_videos"], inputs["video_grid_thw"]
    run_tower(visual, pixels, grid)
    mark("vision tower (first)")
    run_tower(visual, pixels, grid)
    mark("vision tower (second)")
    result = engine.generate(Request("Describe.", video=synthetic_video(frames), max_new_tokens=32))
    mark(f"first request (prefill {result.timings.prefill_s:.3f} s, warm-up {result.timings.warmup_s:.3f} s)")
    result = engine.generate(Request("Describe.", video=synthetic_video(frames), max_new_tokens=32))
    mark(f"second request (prefill {result.timings.prefill_s:.3f} s)")


def warm_up_request(model: str, frames: int, mode: str) -> None:
    """mode: none; tiny (`Engine.warm_up()`); planned (`Engine.warm_up(tokens)` with the request's
    own token count, as `qvl video` does once the video is planned)."""
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from common import synthetic_video

    from qvl.engine import Engine, Request
    from qvl.runner import TEXT_ALLOWANCE

    started = time.perf_counter()
    engine = Engine(model)
    print(f"  Engine({model}) {time.perf_counter() - started:.3f} s")
    request = Request("Describe.", video=synthetic_video(frames), max_new_tokens=32)
    if mode != "none":
        # As the CLI plans it, from the frames' size alone (448 / 28 = 16 tokens a side, two frames a patch).
        planned = frames // 2 * 16 * 16 + TEXT_ALLOWANCE + request.max_new_tokens
        tokens = planned if mode == "planned" else None
        spent = engine.warm_up(tokens)
        torch.cuda.synchronize()
        print(f"  warm-up ({mode}) {spent:.3f} s")
    for label in ("first", "second"):
        started = time.perf_counter()
        result = engine.generate(request)
        t = result.timings
        print(
            f"  {label} request {time.perf_counter() - started:.3f} s (processor {t.preprocess_s:.3f}, vision "
            f"{t.vision_s:.3f}, prefill {t.prefill_s:.3f}, graph {t.warmup_s:.3f}, decode {t.decode_s:.3f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:7b")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--first-calls", action="store_true", help="only part 2, in this process")
    parser.add_argument("--warm-up", choices=["none", "tiny", "planned"], help="only part 3, in this process")
    args = parser.parse_args()
    if args.first_calls:
        first_calls(args.model, args.frames)
        return
    if args.warm_up:
        warm_up_request(args.model, args.frames, args.warm_up)
        return
    imports()
    print()
    command = [sys.executable, __file__, "--first-calls", "--model", args.model, "--frames", str(args.frames)]
    subprocess.run(command, check=True)
    for mode in ("none", "tiny", "planned"):
        print(f"\nfresh process, warm-up request: {mode}")
        subprocess.run([*command[:2], "--warm-up", mode, *command[3:]], check=True)


if __name__ == "__main__":
    main()
