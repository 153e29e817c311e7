"""Property-based tests of the frame planner: any options give a valid plan or one QvlError line."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qvl.errors import QvlError
from qvl.media.video import FACTOR, FRAME_FACTOR, VideoInfo, VideoOptions, plan_frames, probe
from qvl.media.video.decode import _truncated

odd_floats = st.sampled_from([math.nan, math.inf, -math.inf, -0.0])
seconds = st.one_of(
    st.none(),
    st.floats(min_value=-5, max_value=5000),
    st.sampled_from([0.0, 0.01, 1.0, 10.0, 5.0]),
    odd_floats,
)
counts = st.integers(min_value=-3, max_value=2000)
pixels = st.one_of(st.none(), st.integers(min_value=-10, max_value=50_000_000))

options_kwargs = st.fixed_dictionaries(
    {},
    optional={
        "frames": st.one_of(st.none(), counts),
        "fps": st.one_of(st.none(), st.floats(min_value=-10, max_value=500), odd_floats),
        "start": seconds,
        "end": seconds,
        "min_frames": counts,
        "max_frames": counts,
        "min_pixels": st.integers(min_value=-10, max_value=2_000_000),
        "max_pixels": pixels,
        "total_pixels": pixels,
        "seek": st.sampled_from(["auto", "exact", "fast"]),
    },
)

infos = st.builds(
    lambda duration, fps, width, height: VideoInfo(
        path="v.mp4", duration=duration, fps=fps, width=width, height=height, rotation=0, codec="h264", frame_count=None
    ),
    duration=st.floats(min_value=0.001, max_value=36_000),
    fps=st.floats(min_value=0.1, max_value=240),
    width=st.integers(min_value=1, max_value=8192),
    height=st.integers(min_value=1, max_value=8192),
)


def _one_line(exc: QvlError) -> None:
    message = str(exc)
    assert message and "\n" not in message, message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kwargs=options_kwargs, info=infos)
def test_any_options_plan_validly_or_raise_one_qvl_error(kwargs, info):
    try:
        options = VideoOptions(**kwargs)
    except QvlError as exc:
        _one_line(exc)
        return
    try:
        plan = plan_frames(info, options)
    except QvlError as exc:
        _one_line(exc)
        return

    n = plan.frames
    assert n >= FRAME_FACTOR and n % FRAME_FACTOR == 0
    if options.frames is not None:
        assert n == max(FRAME_FACTOR, math.ceil(options.frames / FRAME_FACTOR) * FRAME_FACTOR)
    else:
        assert n <= max(FRAME_FACTOR, options.max_frames // FRAME_FACTOR * FRAME_FACTOR)
    # Never more frames than the span holds (a single-frame span is used twice).
    assert n <= max(FRAME_FACTOR, round((plan.end - plan.start) * info.fps) + 1)

    ts = plan.timestamps
    assert all(a < b for a, b in zip(ts, ts[1:]))
    assert plan.start <= ts[0] and ts[-1] <= plan.end <= info.duration + 1e-9
    assert plan.start == (options.start or 0.0)

    assert plan.width % FACTOR == 0 and plan.height % FACTOR == 0
    assert plan.width >= FACTOR and plan.height >= FACTOR
    assert plan.tokens == n // FRAME_FACTOR * (plan.width // FACTOR) * (plan.height // FACTOR)
    total = options.total_pixels if options.total_pixels is not None else 128000 * 0.9 * FACTOR * FACTOR
    assert plan.tokens <= int(total) // (FACTOR * FACTOR)
    assert plan.sampled_fps > 0 and math.isfinite(plan.sampled_fps)


@settings(max_examples=200, deadline=None)
@given(start=seconds, end=seconds)
def test_validation_is_one_line_for_any_span(start, end):
    try:
        VideoOptions(start=start, end=end)
    except QvlError as exc:
        _one_line(exc)


@pytest.mark.parametrize("good", [0.0, 0.01, 0.05])
def test_truncation_advice_is_never_an_end_qvl_refuses(clip, good):
    info = probe(clip)
    plan = plan_frames(info, VideoOptions(frames=4))
    message = str(_truncated(str(clip), plan, info, good))
    assert "--end 0 " not in message and "--end 0)" not in message
    assert "nothing before the damage" in message


def test_truncation_advice_gives_an_end_that_plans(clip):
    info = probe(clip)
    plan = plan_frames(info, VideoOptions(frames=4, start=1.0))
    message = str(_truncated(str(clip), plan, info, 2.5))
    assert "--end 2.5" in message
    plan_frames(info, VideoOptions(fps=2, start=1.0, end=2.5))  # the advice is accepted
