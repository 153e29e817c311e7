"""Probing and decoding real files: exact frames, keyframe snapping, VFR, rotation, bad input."""

from __future__ import annotations

import os
import re
import subprocess

import av
import numpy as np
import pytest

from qvl.errors import InputError, OptionError
from qvl.media.ffmpeg import ffmpeg_exe
from qvl.media.video import (
    TruncatedVideo,
    VideoOptions,
    decode_plan,
    load_video,
    plan_frames,
    plan_source,
    probe,
)
from qvl.media.video.decode import _to_array


def reference(path, plan):
    """Every frame decoded front to back, as (time, array at the plan's size)."""
    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            out.append((float(f.time), _to_array(f, plan.width, plan.height, plan.rotation)))
    return out


def nearest(ref, t):
    return min(ref, key=lambda x: (abs(x[0] - t), x[0]))


def one_line(exc) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


# -- probe ---------------------------------------------------------------------------------------


def test_probe(clip):
    info = probe(clip)
    assert (info.width, info.height, info.rotation) == (320, 240, 0)
    assert info.duration == pytest.approx(4.0, abs=0.05)
    assert info.fps == pytest.approx(10.0)
    assert info.codec == "h264" and info.has_audio and info.has_video


def test_probe_rotated_swaps_sides(rotated_clip):
    info = probe(rotated_clip)
    assert info.rotation in (90, 270)
    assert (info.width, info.height) == (240, 320)


def test_probe_names_with_spaces_and_non_ascii(unicode_clip):
    clip = load_video(unicode_clip, VideoOptions(frames=4))
    assert clip.frames.shape[0] == 4 and clip.source == str(unicode_clip)


@pytest.mark.parametrize(
    "fixture, pattern",
    [
        ("not_a_video", r"not a video"),
        ("audio_only", r"has no video stream \(audio only\)"),
        ("zero_length", r"zero-length"),
        ("truncated_no_index", r"truncated"),
    ],
)
def test_probe_bad_files(request, fixture, pattern):
    path = request.getfixturevalue(fixture)
    with pytest.raises(InputError) as exc:
        probe(path)
    assert re.search(pattern, one_line(exc))
    assert str(path) in str(exc.value)


def test_missing_empty_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        probe(tmp_path / "nope.mp4")
    with pytest.raises(InputError, match="is a directory"):
        probe(tmp_path)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
        probe(empty)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path, clip):
    p = tmp_path / "locked.mp4"
    p.write_bytes(clip.read_bytes())
    p.chmod(0)
    with pytest.raises(InputError, match="permission denied"):
        probe(p)


# -- exact extraction ---------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("frames", [4, 10, 30])
def test_exact_frames_equal_a_full_decode(long_gop_clip, frames, workers):
    info = probe(long_gop_clip)
    plan = plan_frames(info, VideoOptions(frames=frames, seek="exact"))
    ex = decode_plan(long_gop_clip, plan, info, workers=workers)
    ref = reference(long_gop_clip, plan)
    assert ex.frames.shape == (plan.frames, plan.height, plan.width, 3) and ex.frames.dtype == np.uint8
    for t, got, real in zip(plan.timestamps, ex.frames, ex.timestamps):
        rt, rframe = nearest(ref, t)
        assert real == pytest.approx(rt)
        np.testing.assert_array_equal(got, rframe)
    assert ex.keyframes == 0


def test_exact_span(long_gop_clip):
    info = probe(long_gop_clip)
    plan = plan_frames(info, VideoOptions(frames=6, start=2.0, end=5.0, seek="exact"))
    ex = decode_plan(long_gop_clip, plan, info)
    assert all(2.0 <= t <= 5.0 for t in ex.timestamps)
    assert ex.timestamps == pytest.approx(plan.timestamps, abs=0.02 + 1e-9)


def test_auto_snaps_only_within_half_the_spacing(long_gop_clip):
    info = probe(long_gop_clip)
    plan = plan_frames(info, VideoOptions(frames=4))  # spacing 1.5 s, keyframes every 3 s
    ex = decode_plan(long_gop_clip, plan, info)
    ref = reference(long_gop_clip, plan)
    by_time = {round(t, 4): a for t, a in ref}
    for t, got, real in zip(plan.timestamps, ex.frames, ex.timestamps):
        assert abs(real - t) <= plan.tolerance + 1e-6
        np.testing.assert_array_equal(got, by_time[round(real, 4)])
    assert ex.keyframes >= 1  # 0.75 -> keyframe 0.0 and 3.75 -> keyframe 3.0
    assert list(ex.timestamps) == sorted(set(ex.timestamps))


def test_variable_frame_rate_by_timestamps(vfr_clip):
    info = probe(vfr_clip)
    plan = plan_frames(info, VideoOptions(frames=8, seek="exact"))
    ex = decode_plan(vfr_clip, plan, info)
    ref = reference(vfr_clip, plan)
    for t, got, real in zip(plan.timestamps, ex.frames, ex.timestamps):
        rt, rframe = nearest(ref, t)
        assert real == pytest.approx(rt)
        np.testing.assert_array_equal(got, rframe)
    # The second half is 3x sparser: a frame-index plan would have landed elsewhere.
    assert ex.timestamps[-1] > 4.0


def test_rotation_matches_ffmpeg_autorotate(rotated_clip):
    info = probe(rotated_clip)
    plan = plan_frames(info, VideoOptions(frames=2, seek="exact"))
    ex = decode_plan(rotated_clip, plan, info)
    assert ex.frames.shape[1:3] == (plan.height, plan.width) and plan.height > plan.width
    index = round(ex.timestamps[0] * info.fps)
    raw = subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            str(rotated_clip),
            "-vf",
            f"select=eq(n\\,{index}),scale={plan.width}:{plan.height}:flags=bicubic",
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    want = np.frombuffer(raw, np.uint8).reshape(plan.height, plan.width, 3).astype(int)
    got = ex.frames[0].astype(int)
    right = np.abs(got - want).mean()
    wrong = np.abs(np.rot90(got, 2) - want).mean()
    assert right < 4 and wrong > 4 * right


def test_single_frame_video(single_frame_clip):
    clip = load_video(single_frame_clip, VideoOptions())
    assert clip.frames.shape[0] == 2
    np.testing.assert_array_equal(clip.frames[0], clip.frames[1])
    assert clip.sampled_fps > 0


def test_decode_plan_contract(clip):
    plan = plan_frames(probe(clip), VideoOptions(frames=4))
    ex = decode_plan(clip, plan)
    assert ex.frames.shape == (4, plan.height, plan.width, 3) and ex.frames.dtype == np.uint8
    assert len(ex.timestamps) == 4 and list(ex.timestamps) == sorted(ex.timestamps)
    # load_video is the same path with probing and planning done for you.
    np.testing.assert_array_equal(load_video(clip, VideoOptions(frames=4)).frames, ex.frames)


def test_progress_reports_every_frame(clip):
    seen = []
    load_video(clip, VideoOptions(frames=6), progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 6) for i in range(7)]  # (0, 6) as decoding starts, then each frame


def test_sampled_fps_matches_real_pair_spacing(clip):
    c = load_video(clip, VideoOptions(frames=8, seek="exact"))
    ts = c.timestamps
    assert 2 / c.sampled_fps == pytest.approx((ts[-1] - ts[0]) / (len(ts) - 1) * 2)
    assert c.sampled_fps == pytest.approx(2.0, rel=0.05)


# -- bad input through load_video ---------------------------------------------------------------


def test_truncated_mid_stream_says_how_many_frames_are_usable(truncated_faststart):
    info = probe(truncated_faststart)
    assert info.duration == pytest.approx(8.0, abs=0.1)  # the header still claims 8 s
    with pytest.raises(TruncatedVideo) as exc:
        load_video(truncated_faststart, VideoOptions(frames=16))
    msg = one_line(exc)
    err = exc.value
    assert 0 < err.usable < 16 and f"{err.usable} of the 16 planned frames" in msg
    end = float(re.search(r"--end ([\d.]+)", msg).group(1))
    ok = load_video(truncated_faststart, VideoOptions(frames=4, end=end))
    assert ok.frames.shape[0] == 4


def test_start_past_the_end(clip):
    with pytest.raises(OptionError, match=r"--start 10 s is past the end") as exc:
        load_video(clip, VideoOptions(start=10))
    one_line(exc)


def test_plan_source_needs_no_decoding(clip):
    plan = plan_source(clip, VideoOptions(fps=1))
    assert plan.frames == 4 and plan.to_dict()["frames"] == 4
