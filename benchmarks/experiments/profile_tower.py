"""Where the fast vision tower's time goes: torch.profiler over `run_tower` on synthetic frames,
the kernels ranked by GPU time.

    PYTHONPATH=. python3 benchmarks/experiments/profile_tower.py [--model random:7b] [--frames 64] [--rows 20]
"""

from __future__ import annotations

import argparse

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
    from qvl.engine.vision import run_tower

    engine = Engine(args.model)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (args.frames, 28, 28, 3), dtype=np.uint8)
    frames = np.repeat(np.repeat(small, 16, axis=1), 16, axis=2)
    inputs = engine.prepare(Request("x", video=VideoFrames(frames, 2.0)))
    visual, pixels, grid = engine.model.model.visual, inputs["pixel_values_videos"], inputs["video_grid_thw"]
    for _ in range(2):
        run_tower(visual, pixels, grid)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run_tower(visual, pixels, grid)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
