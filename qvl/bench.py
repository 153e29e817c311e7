"""`qvl bench`: where the time of one video question goes, transformers' stock path against qvl's.

    config = BenchConfig.parse(model=None, frames="64,256", max_tokens=256, repeat=2)
    for record in run(config, note=print):
        ...  # one JSON-ready dict per frame count

A synthetic video is written once (PyAV, 448x448, long enough to sample the largest frame count at
2 fps); then for each frame count: frame extraction (the frame cache off), the processor, the
vision tower alone (the model's module against `qvl.engine.vision.run_tower`), and the whole answer
through `Engine.generate(fast=False)` and `Engine.generate(fast=True)`: the first (cold) request of
each path apart from the median of `repeat` warm ones, and whether both paths' greedy tokens agree.
GPU work is synchronised around every timing. Nothing here prints or knows of Typer: progress
goes through `note`, and the CLI renders the records (`qvl.output.bench_table`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from qvl.errors import OptionError

SIDE = 448  # frame side in pixels: 256 language-model tokens per pair of frames
# 262,144 prompt tokens of 448x448 frames: beyond what a 7B's context and one GPU serve.
MOST_FRAMES = 2048
SAMPLE_FPS = 2.0  # the rate the largest frame count is sampled at
SOURCE_FPS = 24  # the synthetic video's own rate, as a filmed one would have
KEYFRAME_S = 2  # a keyframe every 2 s, as encoders commonly place them
PROMPT = "Describe this video."


@dataclass(frozen=True)
class BenchConfig:
    """What `qvl bench` measures. model None: random:7b where the device is CUDA, else tiny.

    psa: a `qvl.psa.AttentionConfig` for both paths' prefill, or None (SDPA).
    """

    model: str | None = None
    frames: tuple[int, ...] = (64, 256)
    max_tokens: int = 256
    repeat: int = 2
    device: str = "auto"
    dtype: str = "auto"
    psa: Any = None

    def __post_init__(self) -> None:
        from qvl.engine.load import check_device, check_dtype

        if not self.frames or any(n < 2 or n % 2 for n in self.frames):
            raise OptionError(f"--frames takes even counts of at least 2, like 64,256 (got {self.frames})")
        if max(self.frames) > MOST_FRAMES:
            raise OptionError(f"--frames takes at most {MOST_FRAMES:,} frames (got {max(self.frames):,})")
        if self.repeat < 1:
            raise OptionError(f"--repeat must be at least 1 (got {self.repeat})")
        if self.max_tokens < 1:
            raise OptionError(f"--max-tokens must be at least 1 (got {self.max_tokens})")
        check_device(self.device)
        check_dtype(self.dtype)

    @classmethod
    def parse(cls, *, frames: str, **kwargs) -> BenchConfig:
        """A config from the command line's values; `frames` is a comma-separated list."""
        return cls(frames=parse_frames(frames), **kwargs)


def parse_frames(text: str) -> tuple[int, ...]:
    """'64,256' -> (64, 256); anything else is an `OptionError` naming --frames."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise OptionError(f"--frames takes comma-separated whole numbers, like 64,256 (got {text!r})") from None
    if any(n < 2 or n % 2 for n in counts):
        raise OptionError(f"--frames takes even counts of at least 2, like 64,256 (got {text!r})")
    return counts


def default_model(device: str) -> str:
    """The model `qvl bench` measures when none is named, for a resolved device."""
    return "random:7b" if device == "cuda" else "tiny"


def write_video(path: Path, seconds: float, *, side: int = SIDE, fps: int = SOURCE_FPS, seed: int = 0) -> Path:
    """A synthetic video of `seconds`, `side` x `side`, written with PyAV (no ffmpeg binary needed).

    A smooth random scene (drawn from `seed`) scrolls a pixel per frame, so frames differ as filmed
    ones do and the encoder has real work. H.264 where PyAV has it, else MPEG-4 Part 2.
    """
    import av
    import numpy as np

    count = max(1, round(seconds * fps))
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 255, (side // 16, (side + count) // 16 + 1, 3), dtype=np.uint8)
    scene = np.repeat(np.repeat(blocks, 16, axis=0), 16, axis=1)
    last: Exception | None = None
    for codec in ("libx264", "mpeg4"):
        try:
            with av.open(str(path), "w") as container:
                stream = container.add_stream(codec, rate=fps)
                stream.width = stream.height = side
                stream.pix_fmt = "yuv420p"
                stream.codec_context.gop_size = KEYFRAME_S * fps
                if codec == "libx264":
                    stream.options = {"preset": "veryfast"}
                else:
                    stream.codec_context.bit_rate = 4_000_000
                for i in range(count):
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(scene[:, i : i + side]), format="rgb24")
                    container.mux(stream.encode(frame))
                container.mux(stream.encode())
            return path
        except (av.FFmpegError, ValueError, KeyError) as exc:  # no such encoder in this PyAV build
            last = exc
    raise RuntimeError(f"PyAV could not encode a test video with libx264 or mpeg4: {last}")


def machine(engine) -> dict[str, Any]:
    """What a benchmark record says about where it ran."""
    import datetime
    import platform

    import torch
    import transformers

    cuda = engine.model.device.type == "cuda"
    return {
        "model": engine.name,
        "device": engine.device,
        "dtype": str(engine.dtype).removeprefix("torch."),
        "card": torch.cuda.get_device_name(engine.model.device) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


class _Clock:
    """Wall-clock timing with the GPU synchronised on both sides (nothing to wait for on the CPU)."""

    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        self.sync()
        started = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - started

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 1e9 if self.cuda else None


def run(
    config: BenchConfig, note: Callable[[str], None] = lambda _: None, *, engine=None, progress: bool = True
) -> Iterator[dict]:
    """Measure every frame count of `config`; one record per count, as each is done.

    engine: an already loaded `qvl.engine.Engine` to measure instead of loading `config.model`;
    progress: the model load's progress bars on stderr.
    """
    import tempfile

    from qvl.engine import Engine, resolve_device

    if engine is None:
        model = config.model
        if model is None:
            device = resolve_device(config.device)
            model = default_model(device)
            found = "no CUDA GPU found, so " if device == "cpu" and config.device == "auto" else ""
            note(f"no --model: {found}measuring {model}")
        # transformers' model, which the stock path runs (qvl's own tree would not serve it)
        engine = Engine(
            model, device=config.device, dtype=config.dtype, psa=config.psa, progress=progress, native=False
        )
        note(f"loaded {engine.name} on {engine.device} in {engine.load_s:.1f} s")
    if engine.is_tiny:
        note("the built-in tiny model: its timings say little about real models")
    if engine.model.device.type == "cpu":
        note("on the CPU qvl's path runs eagerly, without CUDA graphs")
    elif engine.fast_path_problem is not None:
        note(f"{engine.fast_path_problem}: qvl's path is timed as it runs there, not as on one GPU")
    about = machine(engine)
    clock = _Clock(engine.model.device)
    with tempfile.TemporaryDirectory(prefix="qvl-bench-") as folder:
        seconds = max(config.frames) / SAMPLE_FPS
        note(f"writing a synthetic video of {seconds:g} s ({SIDE}x{SIDE}, {SOURCE_FPS} fps)")
        video = write_video(Path(folder) / "bench.mp4", seconds)
        for count in config.frames:
            record = {**about, "frames": count, **measure(engine, video, count, config, clock, note)}
            if config.psa is not None:
                record["psa"] = config.psa.preset_name
            yield _rounded(record)


def _rounded(value):
    """Four significant digits for every float: measurements, not noise."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def measure(engine, video: Path, count: int, config: BenchConfig, clock: _Clock, note) -> dict[str, Any]:
    """One frame count: every stage, both paths."""
    from qvl.engine import Request, VideoFrames
    from qvl.media.video import MAX_FRAMES, VideoOptions, load_video

    options = VideoOptions(frames=count, max_pixels=SIDE * SIDE, max_frames=max(count, MAX_FRAMES))
    clip, extract_s = clock.time(lambda: load_video(video, options, cache=None))
    request = Request(PROMPT, video=VideoFrames(clip.frames, clip.sampled_fps), max_new_tokens=config.max_tokens)
    inputs, processor_s = clock.time(lambda: engine.prepare(request))
    prompt_tokens = int(inputs["input_ids"].shape[1])
    note(
        f"{count} frames: {prompt_tokens:,} prompt tokens; extraction {extract_s:.2f} s, processor {processor_s:.2f} s"
    )
    tower = time_tower(engine, inputs, config.repeat, clock)
    del inputs
    note(f"{count} frames: vision tower stock {tower['stock']:.3f} s, qvl {tower['qvl']:.3f} s")
    answers = {name: time_answers(engine, request, fast, config.repeat, clock) for name, fast in PATHS}
    stock_tokens, qvl_tokens = answers["stock"].pop("tokens"), answers["qvl"].pop("tokens")
    for name, _ in PATHS:
        answers[name]["vision_s"] = tower[name]
        # What a user waits for once the frames are decoded: the processor, then the prefill.
        answers[name]["frames_ttft_s"] = processor_s + answers[name]["ttft_s"]
    same = next(
        (i for i, (a, b) in enumerate(zip(stock_tokens, qvl_tokens)) if a != b), min(len(stock_tokens), len(qvl_tokens))
    )
    if clock.cuda:
        clock.torch.cuda.empty_cache()
    return {
        "frame_size": [clip.plan.width, clip.plan.height],
        "sampled_fps": round(clip.sampled_fps, 6),
        "prompt_tokens": prompt_tokens,
        "max_tokens": config.max_tokens,
        "repeat": config.repeat,
        "extract_s": extract_s,
        "processor_s": processor_s,
        "vision_rel_rmse": tower["rel_rmse"],
        **{f"vision_{k}": tower[k] for k in ("stock_vs_fp32", "qvl_vs_fp32") if k in tower},
        "stock": answers["stock"],
        "qvl": answers["qvl"],
        "greedy": {
            "same_leading_tokens": same,
            "stock_tokens": len(stock_tokens),
            "qvl_tokens": len(qvl_tokens),
            "agree": stock_tokens == qvl_tokens,
        },
    }


PATHS = (("stock", False), ("qvl", True))


def time_tower(engine, inputs, repeat: int, clock: _Clock) -> dict[str, float]:
    """The vision tower alone: the model's module and `run_tower`, median of `repeat` after a warm-up,
    and how far apart their outputs are (relative RMSE)."""
    import torch

    from qvl.engine.vision import run_tower

    visual = engine.model.model.visual
    pixels, grid = inputs["pixel_values_videos"], inputs["video_grid_thw"]

    def stock():
        with torch.inference_mode():
            out = visual(pixels, grid_thw=grid)
        return getattr(out, "pooler_output", out)

    def fast():
        with torch.inference_mode():
            return run_tower(visual, pixels, grid)

    result: dict[str, float] = {}
    for name, fn in (("stock", stock), ("qvl", fast)):
        fn()
        result[name] = statistics.median(clock.time(fn)[1] for _ in range(repeat))
    ours, theirs = fast().float(), stock().float()
    result["rel_rmse"] = _relative(ours, theirs)
    if pixels.dtype != torch.float32 or visual.dtype != torch.float32:
        # Both paths round to the model's dtype over 32 blocks: the same tower in fp32 says whether
        # ours stays as close to the exact features as the stock one.
        import copy

        exact = copy.deepcopy(visual).float()
        with torch.inference_mode():
            out = exact(pixels.float(), grid_thw=grid)
        reference = getattr(out, "pooler_output", out)
        del exact
        result["stock_vs_fp32"] = _relative(theirs, reference)
        result["qvl_vs_fp32"] = _relative(ours, reference)
    return result


def _relative(x, reference) -> float:
    return float((x - reference).norm() / reference.norm().clamp_min(1e-12))


def time_answers(engine, request, fast: bool, repeat: int, clock: _Clock) -> dict[str, Any]:
    """One path's whole answers: the first (cold) request, then the median of `repeat` warm ones.

    ttft_s is the time to the first token after the processor; answer_s the whole `generate` call.
    peak_gpu_gb is the most GPU memory any of these requests held (None on the CPU).
    """
    runs, peaks = [], []
    for _ in range(repeat + 1):
        clock.reset_peak()
        result, wall = clock.time(lambda: engine.generate(request, fast=fast))
        t = result.timings
        peaks.append(clock.peak_gb())
        runs.append(
            {
                "ttft_s": t.prefill_s,
                "tokens_per_s": t.tokens_per_s,
                "answer_s": wall,
                "warmup_s": t.warmup_s,
                "generated": result.generated_tokens,
                "tokens": result.tokens,
            }
        )
    cold, warm = runs[0], runs[1:]
    keys = ("ttft_s", "tokens_per_s", "answer_s", "warmup_s")
    return {
        **{k: statistics.median(r[k] for r in warm) for k in keys},
        "generated": warm[-1]["generated"],
        "cold_ttft_s": cold["ttft_s"],
        "cold_answer_s": cold["answer_s"],
        "cold_warmup_s": cold["warmup_s"],
        "peak_gpu_gb": None if peaks[0] is None else max(peaks),
        "tokens": warm[-1]["tokens"],
    }
