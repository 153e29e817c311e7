"""Plan which frames of a video Qwen2.5-VL sees, and at what size.

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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from qvl.errors import InputError, PlanError
from qvl.media.video.options import (
    DEFAULT_FPS,
    FACTOR,
    FRAME_FACTOR,
    MAX_PIXELS,
    MAX_RATIO,
    TOTAL_PIXELS,
    VideoOptions,
)
from qvl.media.video.probe import VideoInfo


def _floor_by(x: float, f: int) -> int:
    return math.floor(x / f) * f


def _ceil_by(x: float, f: int) -> int:
    return math.ceil(x / f) * f


def _round_by(x: float, f: int) -> int:
    return round(x / f) * f


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

    Raises PlanError (an OptionError) when the request cannot be met: a start past the end, more
    frames than the span holds, or a plan over the token budget (the message lists options that
    fit).
    """
    notes: list[str] = []
    duration = info.duration
    start = float(options.start or 0.0)
    if start >= duration:
        raise PlanError(f"--start {start:g} s is past the end of the video ({duration:.2f} s long)")
    end = duration if options.end is None else float(options.end)
    if end > duration:
        notes.append(f"--end {end:g} s is past the end; using {duration:.3f} s")
        end = duration
    if end <= start:
        raise PlanError(f"--start {start:g} s is not before --end {end:g} s")
    span = end - start
    available = max(1, int(round(span * info.fps)))  # source frames in the span
    cap = max(FRAME_FACTOR, _floor_by(available, FRAME_FACTOR))

    if options.frames is not None:
        n = max(FRAME_FACTOR, _ceil_by(options.frames, FRAME_FACTOR))
        if n != options.frames:
            notes.append(f"--frames {options.frames} rounded up to {n} (frames come in pairs)")
        if n > cap:
            raise PlanError(
                f"--frames {options.frames} asks for more frames than the {span:.2f} s span "
                f"holds ({available} at {info.fps:.4g} fps): use --frames {cap} or fewer"
            )
    else:
        fps = options.fps if options.fps is not None else DEFAULT_FPS
        lo = _ceil_by(options.min_frames, FRAME_FACTOR)
        hi = _floor_by(options.max_frames, FRAME_FACTOR)
        n = min(max(span * fps, lo), hi, available)
        n = max(FRAME_FACTOR, _floor_by(n, FRAME_FACTOR))
        if options.fps is not None and fps > info.fps and n == _floor_by(available, FRAME_FACTOR):
            notes.append(f"--fps {fps:g} is above the video's {info.fps:.4g} fps: every frame is used once")
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
        raise PlanError(_over_budget(info, options, n, height, width, tokens, budget, span))

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
