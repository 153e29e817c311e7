"""Probe a video, plan which frames Qwen2.5-VL sees, and decode exactly those frames.

One module per job: `options` (what the user asks for), `probe` (what the file is), `plan` (which
timestamps at what size), `decode` (PyAV), `load` (files and URLs, through the frame cache). The
names below are the public API; import them from here.
"""

from qvl.media.video.decode import Extraction, Progress, TruncatedVideo, decode_plan
from qvl.media.video.load import VideoClip, fill_cache, load_video, plan_source
from qvl.media.video.options import (
    DEFAULT_FPS,
    FACTOR,
    FRAME_FACTOR,
    MAX_FRAMES,
    MAX_PIXELS,
    MAX_RATIO,
    MIN_FRAMES,
    MIN_PIXELS,
    MODEL_SEQ_LEN,
    SEEK_MODES,
    TOTAL_PIXELS,
    VIDEO_MAX_TOKENS,
    VIDEO_MIN_TOKENS,
    VideoOptions,
)
from qvl.media.video.plan import FramePlan, plan_frames, sampled_fps_of, smart_resize
from qvl.media.video.probe import VideoInfo, open_container, probe

__all__ = [
    "DEFAULT_FPS",
    "FACTOR",
    "FRAME_FACTOR",
    "MAX_FRAMES",
    "MAX_PIXELS",
    "MAX_RATIO",
    "MIN_FRAMES",
    "MIN_PIXELS",
    "MODEL_SEQ_LEN",
    "SEEK_MODES",
    "TOTAL_PIXELS",
    "VIDEO_MAX_TOKENS",
    "VIDEO_MIN_TOKENS",
    "Extraction",
    "FramePlan",
    "Progress",
    "TruncatedVideo",
    "VideoClip",
    "VideoInfo",
    "VideoOptions",
    "decode_plan",
    "fill_cache",
    "load_video",
    "open_container",
    "plan_frames",
    "plan_source",
    "probe",
    "sampled_fps_of",
    "smart_resize",
]
