"""The app on a CUDA device (cuda + bf16) with the tiny model. Skipped where there is no CUDA.

The GPU host has no ffmpeg, so the video case hands the engine synthetic frames directly.
"""

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import invoke, json_lines

pytestmark = pytest.mark.gpu

HOUSE = Path(__file__).resolve().parent.parent / "examples" / "house.jpg"


def test_describe_runs_on_cuda_in_bf16(tiny_model_dir):
    result = invoke(
        "describe", HOUSE, "--model", "tiny", "--device", "cuda", "--dtype", "bfloat16", "--json", "--max-tokens", "8"
    )
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert record["error"] is None and record["tokens"]["generated"] >= 1
    assert "on cuda" in result.stderr


def test_auto_picks_cuda_and_bf16_and_video_frames_generate(tiny_model_dir):
    import torch

    from qvl.engine import Engine, Request, VideoFrames

    engine = Engine("tiny")
    assert engine.device == "cuda" and engine.dtype == torch.bfloat16
    assert next(engine.model.parameters()).device.type == "cuda"
    frames = np.random.default_rng(0).integers(0, 255, (16, 56, 84, 3), dtype=np.uint8)
    inputs = engine.prepare(Request("What happens?", video=VideoFrames(frames, sampled_fps=2.0)))
    assert inputs["second_per_grid_ts"].tolist() == pytest.approx([1.0])
    result = engine.generate(Request("What happens?", video=VideoFrames(frames, sampled_fps=2.0), max_new_tokens=6))
    assert 1 <= result.generated_tokens <= 6 and result.timings.prefill_s > 0


def _tiny_video(count: int = 16, h: int = 140, w: int = 196):
    from qvl.engine import VideoFrames

    return VideoFrames(np.random.default_rng(1).integers(0, 255, (count, h, w, 3), dtype=np.uint8), 2.0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fast_path_graph_decode_matches_stock_generate(tiny_model_dir, dtype):
    """The CUDA-graph decode against transformers' generate, greedy: identical tokens in fp32; in
    bf16 the fused projections round differently from the stock ones, so only the first 32."""
    from qvl.engine import Engine, Request

    engine = Engine("tiny", device="cuda", dtype=dtype)
    assert engine.fast_path_problem is None
    request = Request("What happens?", video=_tiny_video(), max_new_tokens=48)
    stock = engine.generate(request, fast=False).tokens
    fast = engine.generate(request).tokens
    assert engine._fast.decoder.graph is not None
    assert fast == stock if dtype == "float32" else fast[:32] == stock[:32]
    assert engine.generate(request).tokens == fast  # the captured graph replays the same answer


def test_fast_tower_matches_stock_in_bf16(tiny_model_dir):
    import torch

    from qvl.engine import Engine, Request
    from qvl.engine.vision import run_tower

    engine = Engine("tiny", device="cuda", dtype="bfloat16")
    inputs = engine.prepare(Request("x", video=_tiny_video(8, 252, 364)))
    visual = engine.model.model.visual
    with torch.inference_mode():
        ref = visual(inputs["pixel_values_videos"], grid_thw=inputs["video_grid_thw"])
    ref = getattr(ref, "pooler_output", ref).float()
    out = run_tower(visual, inputs["pixel_values_videos"], inputs["video_grid_thw"]).float()
    assert float((out - ref).norm() / ref.norm()) < 1e-2
