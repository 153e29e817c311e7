"""How to sample a video: the options a user gives and qwen-vl-utils' defaults behind them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from qvl.errors import OptionError

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
