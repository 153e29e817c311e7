"""Variants of the fast vision tower's MLP: the gate/up product's width and the down product's
depth unpadded or padded to multiples of 256, or gate and up kept apart, against `run_tower` as it
is (padded to multiples of 128).

    PYTHONPATH=. python3 benchmarks/experiments/variants_tower.py [--model random:7b] [--frames 64,256]

First the matrix products alone (the tower's shapes, bf16, CUDA events), then the whole tower per
variant on synthetic frames, each checked against the product's tower (relative RMSE).
The published intermediate size (3,420) is not a multiple of 128: cuBLAS then picks an sm80
CUTLASS kernel for the fused product on Hopper; zero rows of the weight (and zero columns of the
down projection) change nothing in the result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import kernel_ms, synthetic_video  # noqa: E402


def relative_rmse(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out.float() - reference.float()).norm() / reference.float().norm())


def gemm_rows(tokens: int) -> list[dict]:
    rows = []
    x = torch.randn(tokens, 1280, device="cuda", dtype=torch.bfloat16)
    for n in (6840, 6912, 3420, 3456, 3840, 1280):
        w = torch.randn(n, 1280, device="cuda", dtype=torch.bfloat16)
        ms = kernel_ms(lambda: F.linear(x, w))
        rows.append(dict(op=f"[{tokens},1280] x [1280,{n}]", ms=ms, tflops=2 * tokens * 1280 * n / ms / 1e9))
    for k in (3420, 3456):
        h = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(1280, k, device="cuda", dtype=torch.bfloat16)
        ms = kernel_ms(lambda: F.linear(h, w))
        rows.append(dict(op=f"[{tokens},{k}] x [{k},1280]", ms=ms, tflops=2 * tokens * 1280 * k / ms / 1e9))
    return rows


def padded_mlp(multiple: int):
    """An `_mlp` whose gate/up and down weights are padded with zeros to `multiple` (1: unpadded)."""
    from qvl.engine.kernels import silu_mul

    def mlp_fn(mlp, h, silu):
        kept = getattr(mlp, f"variant_pad{multiple}", None)
        if kept is None:
            weight = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
            bias = torch.cat([mlp.gate_proj.bias, mlp.up_proj.bias])
            inter = weight.shape[0] // 2
            wide = -(-inter // multiple) * multiple
            gate_up = weight.new_zeros(2 * wide, weight.shape[1])
            gate_up[:inter], gate_up[wide : wide + inter] = weight[:inter], weight[inter:]
            gu_bias = bias.new_zeros(2 * wide)
            gu_bias[:inter], gu_bias[wide : wide + inter] = bias[:inter], bias[inter:]
            down = mlp.down_proj.weight.new_zeros(mlp.down_proj.weight.shape[0], wide)
            down[:, :inter] = mlp.down_proj.weight
            kept = (gate_up, gu_bias, down, mlp.down_proj.bias)
            setattr(mlp, f"variant_pad{multiple}", kept)
        gate_up, gu_bias, down, down_bias = kept
        return F.linear(silu_mul(*F.linear(h, gate_up, gu_bias).chunk(2, dim=-1)), down, down_bias)

    return mlp_fn


def apart_mlp(mlp, h, silu):
    from qvl.engine.kernels import silu_mul

    return mlp.down_proj(silu_mul(mlp.gate_proj(h), mlp.up_proj(h)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:7b")
    parser.add_argument("--frames", default="64,256")
    args = parser.parse_args()

    from qvl.engine import Engine, Request, vision

    frame_counts = [int(n) for n in args.frames.split(",")]
    print(f"{'matrix product':<32} {'ms':>8} {'TFLOP/s':>8}")
    for frames in frame_counts:
        for row in gemm_rows(frames // 2 * 1024):
            print(f"{row['op']:<32} {row['ms']:>8.3f} {row['tflops']:>8.0f}")

    engine = Engine(args.model)
    visual = engine.model.model.visual
    product = vision._mlp
    variants = {"product": product, "unpadded": padded_mlp(1), "pad256": padded_mlp(256), "apart": apart_mlp}
    print(f"\n{'frames':>6} {'variant':<10} {'tower ms':>9} {'rel err':>9}")
    for frames in frame_counts:
        inputs = engine.prepare(Request("x", video=synthetic_video(frames)))
        pixels, grid = inputs["pixel_values_videos"], inputs["video_grid_thw"]
        plan = vision.plan_tower(grid, visual.config)
        reference = None
        for name, fn in variants.items():
            vision._mlp = fn
            out = vision.run_tower(visual, pixels, grid, plan)
            ms = kernel_ms(lambda: vision.run_tower(visual, pixels, grid, plan), reps=5)
            reference = out if reference is None else reference
            print(f"{frames:>6} {name:<10} {ms:>9.2f} {relative_rmse(out, reference):>9.2e}", flush=True)
        vision._mlp = product


if __name__ == "__main__":
    main()
