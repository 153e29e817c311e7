"""Frame planning against qwen-vl-utils' rules, on probed facts only (no files needed)."""

from __future__ import annotations

import math
import re

import pytest

from qvl.errors import InputError, OptionError
from qvl.media.video import (
    FACTOR,
    MAX_PIXELS,
    MIN_PIXELS,
    TOTAL_PIXELS,
    FramePlan,
    VideoInfo,
    VideoOptions,
    plan_frames,
    sampled_fps_of,
)


def info(duration=20.0, fps=30.0, width=1920, height=1080, rotation=0) -> VideoInfo:
    return VideoInfo(
        path="x.mp4",
        duration=duration,
        fps=fps,
        width=width,
        height=height,
        rotation=rotation,
        codec="h264",
        frame_count=round(duration * fps),
    )


def check_invariants(plan: FramePlan) -> None:
    assert plan.frames % 2 == 0 and plan.frames >= 2
    assert plan.width % FACTOR == 0 and plan.height % FACTOR == 0
    assert plan.tokens == plan.frames // 2 * (plan.width // FACTOR) * (plan.height // FACTOR)
    ts = plan.timestamps
    assert all(plan.start <= t < plan.end for t in ts)
    assert all(b > a for a, b in zip(ts, ts[1:]))
    # second_per_grid_ts = 2 / sampled_fps is the real time between consecutive frame pairs.
    if len(ts) >= 4:
        assert 2 / plan.sampled_fps == pytest.approx(ts[2] - ts[0])
    assert sampled_fps_of(ts, plan) == pytest.approx(plan.sampled_fps)


CASES = {
    "20s-1080p-default": (info(), VideoOptions()),
    "20s-fps1": (info(), VideoOptions(fps=1)),
    "20s-frames64": (info(), VideoOptions(frames=64)),
    "1s-short-min-frames": (info(duration=1.0), VideoOptions()),
    "60min-max-frames": (info(duration=3600.0), VideoOptions()),
    "portrait-rotated": (info(width=1080, height=1920, rotation=90), VideoOptions()),
    "tiny-320x240": (info(width=320, height=240, fps=10, duration=4), VideoOptions()),
    "fps-7.5-odd-rate": (info(duration=13.3, fps=29.97), VideoOptions(fps=7.5)),
    "start-end": (info(duration=100.0), VideoOptions(start=10, end=30)),
    "max-pixels": (info(), VideoOptions(frames=8, max_pixels=200_000)),
    "total-pixels": (info(), VideoOptions(frames=64, total_pixels=64 * 150_000)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_plan_matches_qwen_vl_utils(name):
    vinfo, opts = CASES[name]
    plan = plan_frames(vinfo, opts)
    check_invariants(plan)
    qvu = pytest.importorskip("qwen_vl_utils.vision_process")
    span = plan.end - plan.start
    total = round(span * vinfo.fps)
    ele = {"nframes": opts.frames} if opts.frames else {"fps": opts.fps or 2.0}
    if not opts.frames:
        ele.update(min_frames=opts.min_frames, max_frames=min(opts.max_frames, total))
    assert plan.frames == qvu.smart_nframes(ele, total_frames=total, video_fps=vinfo.fps)
    n = plan.frames
    total_pixels = opts.total_pixels or qvu.MODEL_SEQ_LEN * 28 * 28 * 0.9
    max_pixels = max(min(768 * 28 * 28, total_pixels / n * 2), int(128 * 28 * 28 * 1.05))
    if opts.max_pixels:
        max_pixels = min(opts.max_pixels, max_pixels)
    h, w = qvu.smart_resize(vinfo.height, vinfo.width, factor=28, min_pixels=128 * 28 * 28, max_pixels=max_pixels)
    assert (plan.height, plan.width) == (h, w)


def test_defaults_are_qwen_vl_utils():
    o = VideoOptions()
    assert (o.min_frames, o.max_frames) == (4, 768)
    assert MIN_PIXELS == 128 * 28 * 28 and MAX_PIXELS == 768 * 28 * 28
    assert TOTAL_PIXELS == int(128000 * 28 * 28 * 0.9)
    plan = plan_frames(info(), o)
    assert plan.frames == 40 and plan.sampled_fps == pytest.approx(2.0)  # 2 fps over 20 s


def test_midpoint_timestamps_and_fps():
    plan = plan_frames(info(duration=10.0), VideoOptions(frames=4))
    assert plan.timestamps == pytest.approx((1.25, 3.75, 6.25, 8.75))
    assert plan.sampled_fps == pytest.approx(0.4)
    assert plan.to_dict()["second_per_grid_t"] == pytest.approx(5.0)


def test_long_video_is_capped_and_shrunk_to_the_budget():
    plan = plan_frames(info(duration=3600.0), VideoOptions())
    assert plan.frames == 768
    assert plan.tokens <= TOTAL_PIXELS // (28 * 28)
    assert plan.height * plan.width < MAX_PIXELS


def test_odd_frames_round_up():
    plan = plan_frames(info(), VideoOptions(frames=5))
    assert plan.frames == 6 and any("rounded up" in n for n in plan.notes)


def test_fps_above_the_videos_says_every_frame_is_used():
    plan = plan_frames(info(duration=4.0, fps=25), VideoOptions(fps=1000))
    assert plan.frames == 100 and any("above the video's 25 fps" in n for n in plan.notes)
    assert not plan_frames(info(duration=4.0, fps=25), VideoOptions(fps=10)).notes


def test_rotation_uses_displayed_size():
    plan = plan_frames(info(width=1080, height=1920, rotation=90), VideoOptions(frames=4))
    assert plan.height > plan.width and plan.rotation == 90


def test_single_frame_video_gives_a_pair():
    plan = plan_frames(info(duration=0.1, fps=10), VideoOptions())
    assert plan.frames == 2
    plan = plan_frames(info(duration=0.1, fps=10), VideoOptions(frames=1))
    assert plan.frames == 2


def test_end_past_duration_is_clamped():
    plan = plan_frames(info(duration=10.0), VideoOptions(start=2, end=50))
    assert plan.end == 10.0 and plan.notes


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"frames": 0}, r"--frames must be at least 1"),
        ({"frames": -3}, r"--frames must be at least 1"),
        ({"fps": 0}, r"--fps must be a positive"),
        ({"fps": -1.0}, r"--fps must be a positive"),
        ({"frames": 8, "fps": 2}, r"exclusive"),
        ({"start": -1}, r"--start must be"),
        ({"end": -5}, r"--end must be"),
        ({"start": 5, "end": 3}, r"--start 5 s is not before --end 3 s"),
        ({"start": 5, "end": 5}, r"not before"),
        ({"min_frames": 10, "max_frames": 4}, r"--max-frames 4 is below --min-frames 10"),
        ({"max_pixels": 1000}, r"--max-pixels 1,000 is below"),
        ({"seek": "fast"}, r"--seek must be one of"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_bad_options(kwargs, pattern):
    with pytest.raises(OptionError, match=pattern) as exc:
        VideoOptions(**kwargs)
    assert "\n" not in str(exc.value)


def test_start_past_the_end():
    with pytest.raises(OptionError, match=r"--start 30 s is past the end of the video \(20.00 s long\)"):
        plan_frames(info(), VideoOptions(start=30))


def test_more_frames_than_the_span_holds():
    with pytest.raises(OptionError, match=r"use --frames 40 or fewer"):
        plan_frames(info(duration=4.0, fps=10), VideoOptions(frames=64))


def test_over_budget_explains_and_the_suggestions_fit():
    vinfo = info(duration=3600.0)
    opts = VideoOptions(frames=2000)
    with pytest.raises(OptionError) as exc:
        plan_frames(vinfo, opts)
    msg = str(exc.value)
    assert "over the budget" in msg and "options that fit" in msg and "\n" not in msg
    fewer = int(re.search(r"--frames (\d+) or fewer", msg).group(1))
    more = int(re.search(r"--total-pixels ([\d,]+) or more", msg).group(1).replace(",", ""))
    check_invariants(plan_frames(vinfo, VideoOptions(frames=fewer)))
    with pytest.raises(OptionError):
        plan_frames(vinfo, VideoOptions(frames=fewer + 2))
    check_invariants(plan_frames(vinfo, VideoOptions(frames=2000, total_pixels=more)))


def test_over_budget_in_fps_mode_suggests_max_frames():
    vinfo = info(duration=600.0)
    with pytest.raises(OptionError, match=r"--max-frames \d+") as exc:
        plan_frames(vinfo, VideoOptions(total_pixels=MIN_PIXELS * 10))
    fit = int(re.search(r"--max-frames (\d+)", str(exc.value)).group(1))
    plan_frames(vinfo, VideoOptions(total_pixels=MIN_PIXELS * 10, max_frames=fit))


def test_too_elongated_frames():
    with pytest.raises(InputError, match="aspect ratio"):
        plan_frames(info(width=20000, height=50), VideoOptions(frames=2))


def test_plan_dict_is_json_ready():
    import json

    d = plan_frames(info(), VideoOptions(frames=8)).to_dict()
    json.dumps(d)
    assert d["frames"] == 8 and len(d["timestamps"]) == 8
    assert {"width", "height", "sampled_fps", "tokens", "start", "end"} <= d.keys()
    assert math.isclose(d["tokens"], 4 * d["tokens_per_frame_pair"])
