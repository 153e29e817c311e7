"""Probe a video, plan which frames Qwen2.5-VL sees, and decode exactly those frames.

Planning follows qwen-vl-utils (`smart_nframes`, `smart_resize`, `fetch_video`) so a plan made here
gives the model what qwen-vl-utils would: 2 fps by default, 4 to 768 frames, an even frame count,
frame sides multiples of 28, 128 to 768 tokens per frame pair and a whole-video budget of
128000 * 0.9 tokens. Two deliberate differences, both documented in docs/video.md:

- Timestamps are the midpoints of T equal slices of [start, end] rather than rounded frame
  indices from `linspace(first, last)`: timestamps survive variable frame rates, and the spacing is
  exactly span / T, so `sampled_fps = T / span` makes the model's `second_per_grid_ts`
  (= temporal_patch_size / fps = 2 / fps) equal the real seconds between consecutive frame pairs.
- With `seek="auto"` (the default) a frame may be the nearest keyframe when that keyframe lies
  within half the spacing of its timestamp (so it still stands for its own slice of the video);
  decoding a keyframe costs one frame, landing exactly costs up to a whole GOP. The timestamps
  reported with the frames are always the real ones. `seek="exact"` lands every frame exactly.

Decoding uses PyAV (libav in-process): it seeks through the container's index, scales with
libswscale straight to the planned size, honours rotation metadata, and never holds more than one
decoded frame per worker besides the output array.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from qvl.errors import InputError, OptionError

# qwen-vl-utils 0.0.14 defaults (vision_process.py).
FACTOR = 28  # patch 14 * spatial merge 2: one LLM token is a 28x28 pixel tile over 2 frames
FRAME_FACTOR = 2  # temporal patch size
DEFAULT_FPS = 2.0
MIN_FRAMES = 4
MAX_FRAMES = 768
VIDEO_MIN_TOKENS = 128
VIDEO_MAX_TOKENS = 768
MIN_PIXELS = VIDEO_MIN_TOKENS * FACTOR * FACTOR
MAX_PIXELS = VIDEO_MAX_TOKENS * FACTOR * FACTOR
MODEL_SEQ_LEN = 128000
TOTAL_PIXELS = int(MODEL_SEQ_LEN * FACTOR * FACTOR * 0.9)
MAX_RATIO = 200
SEEK_MODES = ("auto", "exact")

Progress = Callable[[int, int], None]


def _floor_by(x: float, f: int) -> int:
    return math.floor(x / f) * f


def _ceil_by(x: float, f: int) -> int:
    return math.ceil(x / f) * f


def _round_by(x: float, f: int) -> int:
    return round(x / f) * f


@dataclass(frozen=True)
class VideoOptions:
    """How to sample a video. Defaults are qwen-vl-utils'; values are checked on construction.

    frames: exact frame count (rounded up to even), or None to sample at `fps`.
    fps: sampling rate in frames per second when `frames` is None (default 2.0).
    start, end: the span to sample, in seconds from the first frame (default: whole video).
    min_frames, max_frames: bounds on the frame count in fps mode.
    max_pixels: per-frame pixel cap (default 768 tokens = 602,112 pixels, lowered by the budget).
    total_pixels: whole-video pixel budget (default 128000 * 0.9 tokens * 784 pixels).
    min_pixels: per-frame pixel floor (default 128 tokens = 100,352 pixels).
    seek: "auto" (a keyframe when one lies within half the spacing of the timestamp, else the
        exact frame) or "exact" (always the frame shown at the timestamp).
    max_download_mb: size limit for video URLs.
    """

    frames: int | None = None
    fps: float | None = None
    start: float | None = None
    end: float | None = None
    min_frames: int = MIN_FRAMES
    max_frames: int = MAX_FRAMES
    max_pixels: int | None = None
    total_pixels: int | None = None
    min_pixels: int = MIN_PIXELS
    seek: str = "auto"
    max_download_mb: float = 2048.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.frames is not None and self.fps is not None:
            raise OptionError("--frames and --fps are exclusive: give one of them")
        if self.frames is not None and self.frames < 1:
            raise OptionError(f"--frames must be at least 1 (got {self.frames})")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise OptionError(f"--fps must be a positive number (got {self.fps:g})")
        for name, value in (("--start", self.start), ("--end", self.end)):
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise OptionError(f"{name} must be a non-negative number of seconds (got {value:g})")
        if self.end is not None and self.end == 0:
            raise OptionError("--end must be after the start of the video (got 0)")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise OptionError(f"--start {self.start:g} s is not before --end {self.end:g} s")
        if self.min_frames < 1:
            raise OptionError(f"--min-frames must be at least 1 (got {self.min_frames})")
        if self.max_frames < 2:
            raise OptionError(f"--max-frames must be at least 2 (got {self.max_frames})")
        if self.max_frames < self.min_frames:
            raise OptionError(f"--max-frames {self.max_frames} is below --min-frames {self.min_frames}")
        if self.min_pixels < FACTOR * FACTOR:
            raise OptionError(f"--min-pixels must be at least {FACTOR * FACTOR}")
        if self.max_pixels is not None and self.max_pixels < self.min_pixels:
            raise OptionError(
                f"--max-pixels {self.max_pixels:,} is below the per-frame minimum of "
                f"{self.min_pixels:,} pixels ({self.min_pixels // (FACTOR * FACTOR)} tokens)"
            )
        if self.total_pixels is not None and self.total_pixels < self.min_pixels:
            raise OptionError(
                f"--total-pixels {self.total_pixels:,} is below one frame's minimum of {self.min_pixels:,} pixels"
            )
        if self.seek not in SEEK_MODES:
            raise OptionError(f"--seek must be one of {', '.join(SEEK_MODES)} (got {self.seek!r})")
        if not self.max_download_mb > 0:
            raise OptionError(f"--max-download-mb must be positive (got {self.max_download_mb:g})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


@dataclass(frozen=True)
class FramePlan:
    """Which frames to decode and at what size.

    timestamps: seconds from the first frame, one per output frame (midpoints of equal slices).
    width, height: output frame size, multiples of 28.
    sampled_fps: T / span; the model's second_per_grid_ts = 2 / sampled_fps.
    tokens: LLM tokens for the video: T/2 * (height/28) * (width/28).
    tolerance: seconds a frame may be from its timestamp with seek="auto" (half the spacing).
    """

    timestamps: tuple[float, ...]
    width: int
    height: int
    sampled_fps: float
    tokens: int
    start: float
    end: float
    seek: str = "auto"
    tolerance: float = 0.0
    rotation: int = 0
    source_duration: float = 0.0
    source_fps: float = 0.0
    source_width: int = 0
    source_height: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def frames(self) -> int:
        return len(self.timestamps)

    @property
    def span(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["frames"] = self.frames
        d["timestamps"] = [round(t, 6) for t in self.timestamps]
        d["notes"] = list(self.notes)
        d["sampled_fps"] = round(self.sampled_fps, 6)
        d["second_per_grid_t"] = round(FRAME_FACTOR / self.sampled_fps, 6)
        d["tokens_per_frame_pair"] = (self.height // FACTOR) * (self.width // FACTOR)
        return d

    def key_dict(self) -> dict[str, Any]:
        """The parts of the plan that decide the decoded pixels (the cache key uses these)."""
        return {
            "timestamps": [round(t, 6) for t in self.timestamps],
            "width": self.width,
            "height": self.height,
            "seek": self.seek,
            "tolerance": round(self.tolerance, 6),
        }


# --------------------------------------------------------------------------------------------
# Probe


def _is_url(source: str | os.PathLike) -> bool:
    s = str(source)
    return s.startswith("http://") or s.startswith("https://")


def _check_readable(path: Path) -> None:
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
    import av

    path = Path(path)
    _check_readable(path)
    container = _open(path)
    with container:
        has_audio = bool(container.streams.audio)
        if not container.streams.video:
            if has_audio:
                raise InputError(f"{path}: has no video stream (audio only)")
            raise InputError(f"{path}: has no video stream (an empty container: zero-length video?)")
        stream = container.streams.video[0]
        tb = stream.time_base
        codec = stream.codec_context.name
        try:
            first = next(iter(container.decode(stream)), None)
        except av.error.FFmpegError:
            first = None
        if first is None:
            raise InputError(f"{path}: has no decodable video frames (zero-length or corrupt)")
        rotation = _rotation_of(first)
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
        cw, ch = first.width, first.height
    if duration <= 0:
        raise InputError(f"{path}: zero-length video")
    width, height = (ch, cw) if rotation in (90, 270) else (cw, ch)
    return VideoInfo(
        path=str(path),
        duration=duration,
        fps=fps,
        width=width,
        height=height,
        rotation=rotation,
        codec=codec,
        frame_count=frame_count,
        has_video=True,
        has_audio=has_audio,
        start_time=start_time,
        size_bytes=path.stat().st_size,
        container=container.format.name if container.format else "",
        coded_width=cw,
        coded_height=ch,
    )


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


# --------------------------------------------------------------------------------------------
# Plan


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """qwen-vl-utils' smart_resize with factor 28: sides multiples of 28, area within bounds."""
    if max(height, width) / max(1, min(height, width)) > MAX_RATIO:
        raise InputError(f"frames of {width}x{height} are too elongated (aspect ratio over {MAX_RATIO}:1)")
    h_bar = max(FACTOR, _round_by(height, FACTOR))
    w_bar = max(FACTOR, _round_by(width, FACTOR))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(FACTOR, _floor_by(height / beta, FACTOR))
        w_bar = max(FACTOR, _floor_by(width / beta, FACTOR))
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = _ceil_by(height * beta, FACTOR)
        w_bar = _ceil_by(width * beta, FACTOR)
    return h_bar, w_bar


def _pair_tokens(height: int, width: int) -> int:
    return (height // FACTOR) * (width // FACTOR)


def plan_frames(info: VideoInfo, options: VideoOptions) -> FramePlan:
    """Choose timestamps and frame size for `info` under `options` (qwen-vl-utils' rules).

    Raises OptionError when the request cannot be met: a start past the end, more frames than
    the span holds, or a plan over the token budget (the message lists options that fit).
    """
    notes: list[str] = []
    duration = info.duration
    start = float(options.start or 0.0)
    if start >= duration:
        raise OptionError(f"--start {start:g} s is past the end of the video ({duration:.2f} s long)")
    end = duration if options.end is None else float(options.end)
    if end > duration:
        notes.append(f"--end {end:g} s is past the end; using {duration:.3f} s")
        end = duration
    if end <= start:
        raise OptionError(f"--start {start:g} s is not before --end {end:g} s")
    span = end - start
    available = max(1, int(round(span * info.fps)))  # source frames in the span
    cap = max(FRAME_FACTOR, _floor_by(available, FRAME_FACTOR))

    if options.frames is not None:
        n = max(FRAME_FACTOR, _ceil_by(options.frames, FRAME_FACTOR))
        if n != options.frames:
            notes.append(f"--frames {options.frames} rounded up to {n} (frames come in pairs)")
        if n > cap:
            raise OptionError(
                f"--frames {options.frames} asks for more frames than the {span:.2f} s span "
                f"holds ({available} at {info.fps:.4g} fps): use --frames {cap} or fewer"
            )
    else:
        fps = options.fps if options.fps is not None else DEFAULT_FPS
        lo = _ceil_by(options.min_frames, FRAME_FACTOR)
        hi = _floor_by(options.max_frames, FRAME_FACTOR)
        n = min(max(span * fps, lo), hi, available)
        n = max(FRAME_FACTOR, _floor_by(n, FRAME_FACTOR))
        if available < FRAME_FACTOR:
            notes.append("the span holds a single frame: it is used twice (frames come in pairs)")

    total_pixels = options.total_pixels if options.total_pixels is not None else TOTAL_PIXELS
    min_pixels = options.min_pixels
    max_pixels = max(min(MAX_PIXELS, total_pixels / n * FRAME_FACTOR), int(min_pixels * 1.05))
    if options.max_pixels is not None:
        if options.max_pixels > max_pixels:
            notes.append(f"--max-pixels {options.max_pixels:,} lowered to {int(max_pixels):,} to fit the total budget")
        max_pixels = min(options.max_pixels, max_pixels)
    height, width = smart_resize(info.height, info.width, min_pixels, int(max_pixels))
    tokens = n // FRAME_FACTOR * _pair_tokens(height, width)
    budget = total_pixels // (FACTOR * FACTOR)
    if tokens > budget:
        raise OptionError(_over_budget(info, options, n, height, width, tokens, budget, span))

    spacing = span / n
    timestamps = tuple(start + (i + 0.5) * spacing for i in range(n))
    return FramePlan(
        timestamps=timestamps,
        width=width,
        height=height,
        sampled_fps=n / span,
        tokens=tokens,
        start=start,
        end=end,
        seek=options.seek,
        tolerance=spacing / 2 if options.seek != "exact" else 0.0,
        rotation=info.rotation,
        source_duration=info.duration,
        source_fps=info.fps,
        source_width=info.width,
        source_height=info.height,
        notes=tuple(notes),
    )


def _over_budget(info, options, n, height, width, tokens, budget, span) -> str:
    mh, mw = smart_resize(info.height, info.width, options.min_pixels, int(options.min_pixels * 1.05))
    per_pair = _pair_tokens(mh, mw)
    fit = _floor_by(budget // per_pair * FRAME_FACTOR, FRAME_FACTOR)
    need_total = tokens * FACTOR * FACTOR
    if options.frames is not None:
        fewer = f"--frames {fit} or fewer"
    else:
        fewer = f"--max-frames {fit}, or --fps {fit / span:.3g} or lower"
    return (
        f"the plan needs {tokens:,} video tokens ({n} frames at {width}x{height}), over the "
        f"budget of {budget:,} tokens set by --total-pixels {budget * FACTOR * FACTOR:,}; "
        f"options that fit: {fewer}, or --total-pixels {need_total:,} or more"
    )


# --------------------------------------------------------------------------------------------
# Extract


class TruncatedVideo(InputError):
    """Decoding stopped before a planned timestamp: the file is cut short or damaged there."""

    def __init__(self, message: str, good_until: float, usable: int):
        super().__init__(message)
        self.good_until = good_until
        self.usable = usable


@dataclass
class Extraction:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    timestamps: tuple[float, ...]  # real presentation times, seconds from the first frame
    keyframes: int  # how many frames were taken at a keyframe instead of an exact seek
    decoded: int  # frames decoded in all (the cost)


class _Damaged(Exception):
    def __init__(self, last_good: float):
        self.last_good = last_good


def _keyframe_times(stream, offset: float) -> list[float]:
    """Keyframe times (seconds from the first frame) from the container index, if it has one."""
    try:
        entries = stream.index_entries
        n = len(entries)
    except Exception:
        return []
    if n == 0:
        return []
    tb = float(stream.time_base)
    out = []
    for i in range(n):
        e = entries[i]
        if e.is_keyframe and e.timestamp is not None:
            out.append(e.timestamp * tb + offset)
    return out


class _Decoder:
    """One container opened for one worker: seeks and decodes forward, one frame held at a time."""

    def __init__(self, path: str, info: VideoInfo, threads: int):
        import av

        self.av = av
        self.container = open_container(path)
        self.stream = self.container.streams.video[0]
        self.stream.codec_context.thread_count = threads
        self.stream.codec_context.thread_type = "SLICE" if threads > 1 else "NONE"
        self.tb = float(self.stream.time_base)
        self.t0 = info.start_time
        self.frame_time = 1.0 / info.fps
        self.gen = None
        self.pending = None  # a frame read by seek() and not handed out yet
        self.last_frame = None  # the last frame handed out (the end of the stream may need it)
        self.skipping = False
        # Frames come out up to a few frames away from decode order; stop skipping well before.
        self.skip_margin = max(16 * self.frame_time, 0.5)
        self.cur: float | None = None  # time of the last frame handed out by next()
        self.last_good = 0.0
        self.decoded = 0
        # Index timestamps are decode times; shift them so the first keyframe is at 0.
        self.keyframes = _keyframe_times(self.stream, 0.0)
        if self.keyframes:
            shift = self.keyframes[0]
            self.keyframes = [k - shift for k in self.keyframes]

    def close(self) -> None:
        self.container.close()

    def seek(self, t: float) -> None:
        """Position on the keyframe at or before time t (seconds from the first frame).

        libav seeks by presentation time for the formats checked (MP4, MKV); if a demuxer lands
        after t anyway, step back until the first decoded frame is at or before t.
        """
        back = 0.0
        for _ in range(6):
            target = t + self.t0 + 0.25 * self.frame_time - back
            self.container.seek(max(0, int(target / self.tb)), stream=self.stream, backward=True)
            self.gen = self.container.decode(self.stream)
            self.cur = None
            self.pending = None
            first = self.next()
            if first is None or target <= 0 or float(first.time) - self.t0 <= t + 0.5 * self.frame_time:
                self.pending, self.cur = first, None
                return
            back = max(1.0, 2 * back)
        self.pending = first

    def next(self):
        if self.pending is not None:
            frame, self.pending = self.pending, None
            self.cur = float(frame.time) - self.t0
            self.last_frame = frame
            return frame
        if self.gen is None:
            self.seek(0.0)
            return self.next()
        while True:
            try:
                frame = next(self.gen)
            except StopIteration:
                return None
            except self.av.error.FFmpegError:
                raise _Damaged(self.last_good) from None
            if frame.time is None:
                continue
            t = float(frame.time) - self.t0
            self.cur = t
            self.last_frame = frame
            self.decoded += 1
            if not getattr(frame, "is_corrupt", False):
                self.last_good = max(self.last_good, t)
            return frame

    def frame_at(self, t: float, *, keyframe_ok: float) -> Any:
        """The frame nearest time t; a keyframe in [t - keyframe_ok, t + keyframe_ok) is taken
        as is (one decode instead of up to a GOP)."""
        half = 0.5 * self.frame_time
        kf = self.keyframes
        if keyframe_ok > 0 and kf:
            i = bisect.bisect_left(kf, t)
            # Half-open window [t - tol, t + tol): with tol = half the spacing, windows of
            # neighbouring timestamps never overlap, so no keyframe serves two of them.
            near = [
                k
                for k in (kf[i - 1] if i else None, kf[i] if i < len(kf) else None)
                if k is not None and t - keyframe_ok - 1e-9 <= k < t + keyframe_ok
            ]
            if near:
                k = min(near, key=lambda k: abs(k - t))
                if not (self.cur is not None and k - 4 * self.frame_time < self.cur < k - half):
                    self.seek(k)
                return self._forward_to(k, landing=True)
        # Exact: decode forward when the target is in the GOP already being decoded.
        prev_key = None
        if kf:
            i = bisect.bisect_right(kf, t + half)
            prev_key = kf[i - 1] if i else None
        if (
            self.cur is None
            or self.cur > t - half
            or (prev_key is not None and prev_key > self.cur + half)
            or (prev_key is None and not kf and t - self.cur > 2.0)
        ):
            self.seek(t)
            # Without an index, the keyframe a seek lands on is the first chance to snap.
            if keyframe_ok > 0 and not kf:
                return self._forward_to(t, accept_within=keyframe_ok)
        return self._forward_to(t)

    def _skip_nonref(self, on: bool) -> None:
        if on != self.skipping:
            self.stream.codec_context.skip_frame = "NONREF" if on else "DEFAULT"
            self.skipping = on

    def _forward_to(self, t: float, accept_within: float = 0.0, landing: bool = False):
        """Decode forward to the frame nearest time t (the last at or before t, or the first after
        it, whichever is closer: right for variable frame rates too). `landing`: take the first
        frame within half a frame of t (a keyframe seek). `accept_within`: take the first frame
        decoded if it lies in [t - accept_within, t + accept_within).
        """
        half = 0.5 * self.frame_time
        prev = None
        prev_t = 0.0
        first = True
        while True:
            # Far from the target, skip frames no other frame refers to (B-frames, mostly): they
            # cannot be the answer and leaving them out cannot damage the frames that are.
            self._skip_nonref(not landing and self.cur is not None and t - self.cur > self.skip_margin)
            frame = self.next()
            if frame is None:
                # End of stream: the last frame stands for a target a frame or two past it.
                if prev is None and self.last_frame is not None:
                    prev, prev_t = self.last_frame, float(self.last_frame.time) - self.t0
                if prev is not None and t - prev_t <= 2.5 * self.frame_time:
                    return prev
                raise _Damaged(self.last_good)
            ft = float(frame.time) - self.t0
            if (first and -accept_within <= ft - t < accept_within) or (landing and ft >= t - half):
                return frame
            first = False
            if ft <= t:
                prev, prev_t = frame, ft
                continue
            if prev is not None and t - prev_t <= ft - t:
                self.pending = frame  # the next target may want it
                self.cur = prev_t
                return prev
            return frame


def _to_array(frame, width: int, height: int, rotation: int) -> np.ndarray:
    """Scale with libswscale (bicubic, as qwen-vl-utils resizes) and rotate for display."""
    if rotation in (90, 270):
        w, h = height, width
    else:
        w, h = width, height
    rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC").to_ndarray()
    if rotation:
        rgb = np.rot90(rgb, k=rotation // 90)
    return rgb


def _default_workers(n: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 8, n // 2 or 1))


def decode_plan(
    path: str | os.PathLike,
    plan: FramePlan,
    info: VideoInfo | None = None,
    *,
    progress: Progress | None = None,
    workers: int | None = None,
) -> Extraction:
    """Decode the planned frames: uint8 [T, H, W, 3] plus the real timestamps.

    The sorted timestamps are cut into `workers` contiguous runs, each decoded by its own thread
    with its own container (libav releases the GIL while decoding). Raises TruncatedVideo
    (an InputError) if decoding stops before a planned timestamp.
    """
    path = str(path)
    info = info or probe(path)
    n = plan.frames
    out = np.empty((n, plan.height, plan.width, 3), dtype=np.uint8)
    times = [0.0] * n
    snapped = [0]
    decoded = [0]
    good = [0.0]  # the latest time any worker decoded cleanly (bounds a truncation)
    workers = workers or _default_workers(n)
    workers = max(1, min(workers, n))
    bounds = [round(i * n / workers) for i in range(workers + 1)]
    lock = threading.Lock()
    done = [0]
    errors: list[BaseException] = []
    keyframe_ok = plan.tolerance if plan.seek == "auto" else 0.0

    def run(lo: int, hi: int) -> None:
        dec = _Decoder(path, info, threads=1 if workers > 1 else 2)
        try:
            for i in range(lo, hi):
                frame = dec.frame_at(plan.timestamps[i], keyframe_ok=keyframe_ok)
                ft = float(frame.time) - info.start_time
                if frame.key_frame and abs(ft - plan.timestamps[i]) > dec.frame_time:
                    with lock:
                        snapped[0] += 1
                out[i] = _to_array(frame, plan.width, plan.height, plan.rotation)
                times[i] = ft
                del frame
                with lock:
                    done[0] += 1
                    if progress is not None:
                        progress(done[0], n)
        except _Damaged as exc:
            errors.append(exc)
        except BaseException as exc:  # surfaced in the calling thread
            errors.append(exc)
        finally:
            with lock:
                decoded[0] += dec.decoded
                good[0] = max(good[0], dec.last_good)
            dec.close()

    if workers == 1:
        run(0, n)
    else:
        threads = [threading.Thread(target=run, args=(bounds[i], bounds[i + 1]), daemon=True) for i in range(workers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    if errors:
        damaged = [e for e in errors if isinstance(e, _Damaged)]
        if damaged:
            raise _truncated(path, plan, info, good[0])
        raise errors[0]
    return Extraction(frames=out, timestamps=tuple(times), keyframes=snapped[0], decoded=decoded[0])


def _truncated(path: str, plan: FramePlan, info: VideoInfo, good: float) -> TruncatedVideo:
    usable = sum(1 for t in plan.timestamps if t <= good)
    return TruncatedVideo(
        f"{path}: truncated or damaged at {good:.2f} s of {info.duration:.2f} s: "
        f"{usable} of the {plan.frames} planned frames lie before the damage "
        f"(use --end {math.floor(good * 100) / 100:g} to sample only the readable part)",
        good_until=good,
        usable=usable,
    )


def extract_frames(path: str | os.PathLike, plan: FramePlan, *, progress: Progress | None = None) -> np.ndarray:
    """The planned frames as uint8 [T, H, W, 3] (see decode_plan for the real timestamps)."""
    return decode_plan(path, plan, progress=progress).frames


def sampled_fps_of(timestamps: Sequence[float], plan: FramePlan) -> float:
    """Frame rate whose spacing matches the real timestamps: (T - 1) / (last - first).

    For an exact plan this equals plan.sampled_fps = T / span (midpoint sampling). When frames
    were taken at keyframes, it is the mean real spacing. Falls back to the plan's figure when
    the timestamps do not spread (a single-frame video used twice).
    """
    if len(timestamps) > 1:
        spread = timestamps[-1] - timestamps[0]
        if spread > 1e-6:
            return (len(timestamps) - 1) / spread
    return plan.sampled_fps


# --------------------------------------------------------------------------------------------
# Load: URL download, cache, decode


@dataclass
class VideoClip:
    """Frames ready for the processor, with where they came from.

    frames: uint8 [T, H, W, 3]; timestamps: real seconds from the first frame; sampled_fps: pass
    it to the processor as the video's fps (see sampled_fps_of); cache: "hit", "miss",
    "rebuilt" (a damaged entry was replaced) or "off".
    """

    frames: np.ndarray
    timestamps: tuple[float, ...]
    sampled_fps: float
    plan: FramePlan
    info: VideoInfo
    from_cache: bool
    source: str
    cache: str = "off"
    cache_key: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Everything but the pixels, for --json."""
        return {
            "source": self.source,
            "frames": int(self.frames.shape[0]),
            "width": int(self.frames.shape[2]),
            "height": int(self.frames.shape[1]),
            "timestamps": [round(t, 6) for t in self.timestamps],
            "sampled_fps": round(self.sampled_fps, 6),
            "tokens": self.plan.tokens,
            "from_cache": self.from_cache,
            "cache": self.cache,
            "cache_key": self.cache_key,
            "seconds": round(self.seconds, 4),
        }


DOWNLOAD_TIMEOUT = float(os.environ.get("QVL_DOWNLOAD_TIMEOUT", "20"))


def download(url: str, dest_dir: str | os.PathLike, *, max_mb: float) -> Path:
    """Fetch `url` into dest_dir, refusing anything over `max_mb` megabytes (1 MB = 10^6 bytes)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    limit = int(max_mb * 1_000_000)
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "video"
    dest = Path(dest_dir) / name
    req = urllib.request.Request(url, headers={"User-Agent": "qvl"})
    try:
        with urllib.request.urlopen(req, timeout=DOWNLOAD_TIMEOUT) as resp:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limit:
                raise InputError(
                    f"{url}: {int(length) / 1e6:.1f} MB is over the download limit of "
                    f"{max_mb:g} MB (raise it with --max-download-mb)"
                )
            got = 0
            with open(dest, "wb") as fh:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    got += len(chunk)
                    if got > limit:
                        raise InputError(
                            f"{url}: more than the download limit of {max_mb:g} MB (raise it with --max-download-mb)"
                        )
                    fh.write(chunk)
            if length and length.isdigit() and got < int(length):
                raise InputError(f"{url}: download cut short ({got:,} of {int(length):,} bytes)")
    except urllib.error.HTTPError as exc:
        raise InputError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        reason = getattr(reason, "strerror", None) or str(reason)
        raise InputError(f"{url}: cannot be reached ({reason})") from None
    except (TimeoutError, OSError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{url}: download failed ({getattr(exc, 'strerror', None) or exc})") from None
    return dest


def _info_from_dict(d: dict) -> VideoInfo:
    return VideoInfo(**{k: d[k] for k in VideoInfo.__dataclass_fields__ if k in d})


@dataclass
class _Prepared:
    path: Path
    info: VideoInfo
    plan: FramePlan
    identity: dict | None
    key: str | None


def _prepare(path: Path, options: VideoOptions, cache, *, downloaded: bool) -> _Prepared:
    """Probe (or reuse the cached probe record), plan, and compute the cache key."""
    identity = None
    info = None
    if cache is not None:
        identity = cache.identity(path, with_mtime=not downloaded)
        stored = cache.load_probe(identity)
        if stored is not None:
            try:
                info = _info_from_dict({**stored["info"], "path": str(path)})
            except (KeyError, TypeError):
                info = None
    if info is None:
        info = probe(path)
        if cache is not None:
            cache.save_probe(identity, info.to_dict())
    plan = plan_frames(info, options)
    key = cache.key(identity, plan.key_dict()) if cache is not None else None
    return _Prepared(path, info, plan, identity, key)


class _LocalSource:
    """A context giving a local path for a file or an http(s) URL (downloaded, then removed)."""

    def __init__(self, source: str, options: VideoOptions):
        self.source = source
        self.options = options
        self.tmpdir: str | None = None

    def __enter__(self) -> Path:
        if _is_url(self.source):
            import tempfile

            self.tmpdir = tempfile.mkdtemp(prefix="qvl-download-")
            return download(self.source, self.tmpdir, max_mb=self.options.max_download_mb)
        path = Path(self.source)
        _check_readable(path)
        return path

    def __exit__(self, *exc) -> None:
        if self.tmpdir is not None:
            import shutil

            shutil.rmtree(self.tmpdir, ignore_errors=True)

    @property
    def downloaded(self) -> bool:
        return self.tmpdir is not None


def plan_source(source: str | os.PathLike, options: VideoOptions | None = None, *, cache=None) -> FramePlan:
    """The frame plan for a file or URL, without decoding frames (for --dry-run)."""
    options = options or VideoOptions()
    local = _LocalSource(str(source), options)
    with local as path:
        return _prepare(path, options, cache, downloaded=local.downloaded).plan


def _cache_meta(src: str, prep: _Prepared, ex: Extraction, fps: float) -> dict:
    info = prep.info
    return {
        "source": {"path": src, **(prep.identity or {})},
        "timestamps": [float(t) for t in ex.timestamps],
        "sampled_fps": fps,
        "source_duration": info.duration,
        "source_fps": info.fps,
        "source_size": [info.width, info.height],
        "plan": prep.plan.to_dict(),
        "keyframes": ex.keyframes,
    }


def fill_cache(
    source: str | os.PathLike,
    options: VideoOptions,
    cache,
    *,
    progress: Progress | None = None,
    workers: int | None = None,
) -> tuple[str, str, FramePlan]:
    """Make sure the cache holds `source`'s frames for `options` without reading them back.

    Returns (status, key, plan): status "cached" (already there) or "new".
    """
    src = str(source)
    local = _LocalSource(src, options)
    with local as path:
        prep = _prepare(path, options, cache, downloaded=local.downloaded)
        if cache.has(prep.key):
            return "cached", prep.key, prep.plan
        cache.check_writable()
        ex = decode_plan(path, prep.plan, prep.info, progress=progress, workers=workers)
        fps = sampled_fps_of(ex.timestamps, prep.plan)
        cache.put(prep.key, ex.frames, _cache_meta(src, prep, ex, fps))
        return "new", prep.key, prep.plan


def load_video(
    source: str | os.PathLike,
    options: VideoOptions | None = None,
    *,
    cache=None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> VideoClip:
    """Probe, plan and decode a video file or http(s) URL, through the frame cache when given.

    cache: a qvl.media.cache.FrameCache, or None to decode every time.
    progress: called as progress(frames_done, frames_total) while decoding.
    Raises InputError (bad file or URL), OptionError (impossible plan), CacheError.
    """
    import time

    t_start = time.perf_counter()
    options = options or VideoOptions()
    src = str(source)
    local = _LocalSource(src, options)
    with local as path:
        prep = _prepare(path, options, cache, downloaded=local.downloaded)
        plan, info, key = prep.plan, prep.info, prep.key
        status, hit = "off", None
        if cache is not None:
            hit = cache.get(key, width=plan.width, height=plan.height)
            status = "hit" if hit is not None else cache.last_status
            if hit is None:
                cache.check_writable()
        if hit is not None:
            frames, timestamps, fps = hit.frames, hit.timestamps, hit.sampled_fps
        else:
            ex = decode_plan(path, plan, info, progress=progress, workers=workers)
            frames, timestamps, fps = ex.frames, ex.timestamps, sampled_fps_of(ex.timestamps, plan)
            if cache is not None:
                cache.put(key, ex.frames, _cache_meta(src, prep, ex, fps))
        return VideoClip(
            frames=frames,
            timestamps=timestamps,
            sampled_fps=fps,
            plan=plan,
            info=info,
            from_cache=hit is not None,
            source=src,
            cache=status,
            cache_key=key,
            seconds=time.perf_counter() - t_start,
        )
