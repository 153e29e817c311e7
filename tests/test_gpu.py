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
