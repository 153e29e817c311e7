"""Decode exactly the planned frames with PyAV (libav in-process).

The decoder seeks through the container's index, scales with libswscale straight to the planned
size, honours rotation metadata, and never holds more than one decoded frame per worker besides
the output array.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from qvl.errors import InputError
from qvl.media.video.plan import FramePlan
from qvl.media.video.probe import VideoInfo, open_container, probe

Progress = Callable[[int, int], None]


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


def _keyframe_times(stream) -> list[float]:
    """Keyframe times in seconds on the stream's clock, from the container index (empty without one)."""
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
            out.append(e.timestamp * tb)
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
        self.keyframes = _keyframe_times(self.stream)
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
    if progress is not None:
        progress(0, n)  # the file is planned and decoding starts (the CLI loads the model from here on)

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
    end = math.floor(good * 100) / 100
    # Only advise an --end that qvl accepts: after --start, and with room for a frame pair.
    if end > plan.start and (end - plan.start) * info.fps >= 2:
        advice = f"use --end {end:g} to sample only the readable part"
    else:
        advice = "nothing before the damage can be sampled; re-encode or fetch the file again"
    return TruncatedVideo(
        f"{path}: truncated or damaged at {good:.2f} s of {info.duration:.2f} s: "
        f"{usable} of the {plan.frames} planned frames lie before the damage ({advice})",
        good_until=good,
        usable=usable,
    )
