"""Real videos for the media tests, generated once per session with the real ffmpeg binary.

Everything is tiny (320x240, a few seconds, 1 s keyframe interval) so the suite stays fast; no
part of ffmpeg or PyAV is mocked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qvl.media.ffmpeg import run_ffmpeg


def ffmpeg(*args: str) -> None:
    run_ffmpeg(*args, timeout=120)


def make_video(
    path: Path,
    *,
    seconds: float = 4.0,
    fps: int = 10,
    size: str = "320x240",
    gop: int = 10,
    audio: bool = False,
    faststart: bool = True,
    extra: tuple[str, ...] = (),
) -> Path:
    args = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-g", str(gop), "-pix_fmt", "yuv420p"]
    if audio:
        args += ["-c:a", "aac", "-shortest"]
    if faststart and path.suffix in (".mp4", ".mov", ".m4v"):
        args += ["-movflags", "+faststart"]
    ffmpeg(*args, *extra, str(path))
    return path


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def clip(media_dir) -> Path:
    """4 s, 10 fps, 320x240 H.264 MP4 with a keyframe every second and an audio track."""
    return make_video(media_dir / "clip.mp4", audio=True)


@pytest.fixture(scope="session")
def long_gop_clip(media_dir) -> Path:
    """6 s at 25 fps with one keyframe every 3 s and B-frames: seeking has real work to do."""
    return make_video(
        media_dir / "long gop.mp4",
        seconds=6,
        fps=25,
        gop=75,
        extra=("-x264-params", "bframes=3:scenecut=0"),
    )


@pytest.fixture(scope="session")
def rotated_clip(media_dir, clip) -> Path:
    """The clip with display rotation metadata of 90 degrees (counter-clockwise)."""
    out = media_dir / "rotated.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(clip), "-c", "copy", str(out))
    return out


@pytest.fixture(scope="session")
def vfr_clip(media_dir) -> Path:
    """Variable frame rate: 20 frames 0.1 s apart, then 10 frames 0.3 s apart (MKV)."""
    variable = "settb=1/1000,setpts='if(lt(N,20),N*100,2000+(N-20)*300)'"
    return make_video(media_dir / "vfr.mkv", seconds=3, extra=("-vf", variable, "-fps_mode", "passthrough"))


@pytest.fixture(scope="session")
def single_frame_clip(media_dir) -> Path:
    return make_video(media_dir / "single.mp4", seconds=0.1, fps=10)


@pytest.fixture(scope="session")
def audio_only(media_dir) -> Path:
    out = media_dir / "tone.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(out))
    return out


@pytest.fixture(scope="session")
def zero_length(media_dir) -> Path:
    return make_video(media_dir / "zero.mp4", faststart=False, extra=("-frames:v", "0"))


@pytest.fixture(scope="session")
def not_a_video(media_dir) -> Path:
    out = media_dir / "notes.mp4"
    out.write_text("these are not the frames you are looking for\n" * 50)
    return out


@pytest.fixture(scope="session")
def truncated_faststart(media_dir) -> Path:
    """An 8 s MP4 (index first) cut to 40 % of its bytes: the first seconds still decode."""
    full = make_video(media_dir / "full8.mp4", seconds=8, fps=10)
    data = full.read_bytes()
    out = media_dir / "truncated.mp4"
    out.write_bytes(data[: int(len(data) * 0.4)])
    return out


@pytest.fixture(scope="session")
def truncated_no_index(media_dir) -> Path:
    """An MP4 written without faststart, cut short: its index (moov) is lost with the tail."""
    full = make_video(media_dir / "full-moov-last.mp4", seconds=4, fps=10, faststart=False)
    data = full.read_bytes()
    out = media_dir / "truncated-no-index.mp4"
    out.write_bytes(data[: len(data) // 2])
    return out


@pytest.fixture(scope="session")
def unicode_clip(media_dir, clip) -> Path:
    d = media_dir / "dossier à espaces"
    d.mkdir(exist_ok=True)
    out = d / "vidéo été 🎬 日本.mp4"
    out.write_bytes(clip.read_bytes())
    return out
