"""Where the fast vision tower's time goes: its wall time against the sum of its kernels' GPU
time, the host's share (planning on the CPU, issuing the launches), then torch.profiler over
`run_tower` on synthetic frames, the kernels ranked by GPU time.

    PYTHONPATH=. python3 benchmarks/experiments/profile_tower.py [--model random:7b] [--frames 64] [--rows 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:7b")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()

    from qvl.engine import Engine, Request, VideoFrames
    from qvl.engine.vision import plan_tower, run_tower

    engine = Engine(args.model)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (args.frames, 28, 28, 3), dtype=np.uint8)
    frames = np.repeat(np.repeat(small, 16, axis=1), 16, axis=2)
    inputs = engine.prepare(Request("x", video=VideoFrames(frames, 2.0)))
    visual, pixels, grid = engine.model.model.visual, inputs["pixel_values_videos"], inputs["video_grid_thw"]
    for _ in range(2):
        run_tower(visual, pixels, grid)
    torch.cuda.synchronize()
    plan = plan_tower(grid, visual.config)
    rows = [
        ("run_tower, synchronised", timed(lambda: run_tower(visual, pixels, grid), sync=True)),
        ("run_tower, plan made ahead", timed(lambda: run_tower(visual, pixels, grid, plan), sync=True)),
        ("plan_tower alone (CPU)", timed(lambda: plan_tower(grid, visual.config), sync=False)),
        ("plan.to(GPU) alone", timed(lambda: plan.to(pixels.device), sync=True)),
        ("issuing run_tower (host, no wait)", timed(lambda: run_tower(visual, pixels, grid), sync=False)),
    ]
    # The same kernels without the host: replayed as one CUDA graph (the plan already on the GPU).
    on_gpu = plan.to(pixels.device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run_tower(visual, pixels, grid, on_gpu)
    rows.append(("run_tower as a CUDA graph", timed(graph.replay, sync=True)))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run_tower(visual, pixels, grid)
        torch.cuda.synchronize()
    events = prof.key_averages()
    rows.append(("sum of kernel times", sum(e.self_device_time_total for e in events) / 1e3))
    for name, ms in rows:
        print(f"{name:<36} {ms:8.1f} ms")
    print(events.table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))


def timed(fn, sync: bool, repeat: int = 5) -> float:
    """Median milliseconds of `fn()` (waiting for the GPU after each call when `sync`)."""
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1e3)
        torch.cuda.synchronize()
    return sorted(times)[len(times) // 2]


if __name__ == "__main__":
    main()
