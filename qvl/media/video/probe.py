"""Read what a video file is: duration, frame rate, displayed size, rotation, codec.

Probing uses PyAV, the same libav that will decode the file, so a file that probes is one the
decoder can read. `open_container` is the one place qvl opens a PyAV container.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qvl.errors import InputError


@dataclass(frozen=True)
class VideoInfo:
    """What probing a video tells. Sizes are as displayed (after rotation)."""

    path: str
    duration: float  # seconds, from the first frame
    fps: float  # average frame rate
    width: int
    height: int
    rotation: int  # 0, 90, 180 or 270: counter-clockwise turn applied for display
    codec: str
    frame_count: int | None  # from the container header, None if it does not say
    has_video: bool = True
    has_audio: bool = False
    start_time: float = 0.0  # presentation time of the first frame, seconds
    size_bytes: int = 0
    container: str = ""
    coded_width: int = 0
    coded_height: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_readable(path: Path) -> None:
    try:
        exists = path.exists()
    except PermissionError:  # a folder on the way cannot be searched
        raise InputError(f"{path}: cannot be read (permission denied)") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not exists:
        if path.is_symlink():
            raise InputError(f"{path}: broken symbolic link")
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a video")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: cannot be read (permission denied)")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not head:
        raise InputError(f"{path}: is empty (0 bytes)")


def _looks_like_mp4(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp"


def open_container(path: str | os.PathLike):
    """`av.open` for reading, on every PyAV release qvl allows.

    PyAV before 19 decodes container metadata strictly unless told `metadata_errors="ignore"`
    (a file with one badly encoded tag would not open at all); PyAV 19 dropped that keyword. It is
    passed while the installed release takes it, and left out from the first refusal on.
    """
    import av

    global _METADATA_ERRORS_KEYWORD
    if _METADATA_ERRORS_KEYWORD:
        try:
            return av.open(str(path), metadata_errors="ignore")
        except TypeError as exc:
            if "metadata_errors" not in str(exc):
                raise
            _METADATA_ERRORS_KEYWORD = False
    return av.open(str(path))


_METADATA_ERRORS_KEYWORD = True


def _open(path: Path):
    import av

    try:
        return open_container(path)
    except av.error.FFmpegError:
        if _looks_like_mp4(path):
            raise InputError(
                f"{path}: MP4 without its index (moov atom): the file is truncated or was not "
                "finished writing, and nothing in it can be decoded"
            ) from None
        raise InputError(f"{path}: not a video (ffmpeg cannot read this format)") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _rotation_of(frame) -> int:
    """Counter-clockwise display rotation, normalised to 0/90/180/270."""
    r = getattr(frame, "rotation", 0) or 0
    return int(round(r / 90.0)) % 4 * 90


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read a local video's duration, frame rate, displayed size, rotation and codec.

    Decodes the first frame (so a file that opens but cannot decode fails here, not later).
    Raises InputError with a one-line message for anything qvl cannot use.
    """
    path = Path(path)
    check_readable(path)
    container = _open(path)
    with container:
        _refuse_still_image(path, container)
        has_audio = bool(container.streams.audio)
        stream, first = _first_frame(path, container, has_audio)
        codec = stream.codec_context.name
        rotation = _rotation_of(first)
        start_time, fps, duration, frame_count = _timing(container, stream, first)
        cw, ch = first.width, first.height
    if duration <= 0:
        raise InputError(f"{path}: zero-length video")
    turned = rotation in (90, 270)
    return VideoInfo(
        path=str(path),
        duration=duration,
        fps=fps,
        width=ch if turned else cw,
        height=cw if turned else ch,
        rotation=rotation,
        codec=codec,
        frame_count=frame_count,
        has_audio=has_audio,
        start_time=start_time,
        size_bytes=path.stat().st_size,
        container=container.format.name if container.format else "",
        coded_width=cw,
        coded_height=ch,
    )


def _refuse_still_image(path: Path, container) -> None:
    """libav opens a JPEG, PNG or WebP as a one-frame video 0.04 s long; the model would get the
    photo twice as a clip. Say what the file is and which command takes it instead."""
    name = container.format.name if container.format else ""
    if name.endswith("_pipe") or name in ("image2", "image2pipe"):
        raise InputError(f"{path}: is a still image, not a video: use qvl describe {shlex.quote(str(path))}")


def _first_frame(path: Path, container, has_audio: bool):
    """The first video stream and its first decoded frame; InputError when there is none."""
    import av

    if not container.streams.video:
        if has_audio:
            raise InputError(f"{path}: has no video stream (audio only)")
        raise InputError(f"{path}: has no video stream (an empty container: zero-length video?)")
    stream = container.streams.video[0]
    try:
        first = next(iter(container.decode(stream)), None)
    except av.error.FFmpegError:
        first = None
    if first is None:
        raise InputError(f"{path}: has no decodable video frames (zero-length or corrupt)")
    return stream, first


def _timing(container, stream, first) -> tuple[float, float, float, int | None]:
    """(start_time, fps, duration, frame_count) from the headers, trusting what is plausible.

    The frame rate falls back to frames / duration, then 25; a duration the headers do not give
    is read from the last packet's timestamp.
    """
    tb = stream.time_base
    start_time = float(first.time) if first.time is not None else 0.0
    if stream.start_time is not None and tb is not None:
        start_time = min(start_time, float(stream.start_time * tb))
    fps = 0.0
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            fps = float(rate)
            if 0 < fps < 1000:
                break
    duration = None
    if stream.duration is not None and tb is not None and stream.duration > 0:
        duration = float(stream.duration * tb)
    elif container.duration is not None and container.duration > 0:
        duration = container.duration / 1_000_000 - max(0.0, start_time - (container.start_time or 0) / 1_000_000)
    frame_count = stream.frames or None
    if fps <= 0 and duration and frame_count:
        fps = frame_count / duration
    if fps <= 0:
        fps = 25.0
    if duration is None or duration <= 0:
        duration = _scan_duration(container, stream, start_time, fps)
    return start_time, fps, duration, frame_count


def _scan_duration(container, stream, start_time: float, fps: float) -> float:
    """Duration from the last packet's timestamp when the header does not give one."""
    last = None
    container.seek(0)
    for packet in container.demux(stream):
        if packet.pts is not None:
            t = float(packet.pts * stream.time_base)
            last = t if last is None else max(last, t)
    if last is None:
        return 0.0
    return last - start_time + 1.0 / fps
