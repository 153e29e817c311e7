"""Where a video question's peak GPU memory is reached, on the stock path and on qvl's: the
allocator's history replayed, the tensors alive at the peak and the code that made them.

    PYTHONPATH=. python3 benchmarks/experiments/memory_peak.py [--model random:7b] [--frames 64]
        [--max-tokens 256] [--top 12]

The request is `qvl bench`'s (a synthetic video, 448x448 frames); each path answers it twice (cold
then warm, as bench_e2e does, stock first). For each answer: `max_memory_allocated` over it, the
peak found by replaying `torch.cuda.memory`'s recorded history (allocations and completed frees
from the memory allocated when recording began), and at that moment the largest live blocks and
the sum of what is live per allocating line (its innermost frame in qvl or transformers).
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common.py
from common import request_options  # noqa: E402

OURS = ("/qvl/", "/qvl_kernels/", "/transformers/")


def where(frames) -> str:
    for frame in frames:
        if any(part in frame["filename"] for part in OURS):
            path = frame["filename"]
            for part in OURS:
                if part in path:
                    path = part.strip("/") + "/" + path.split(part, 1)[1]
                    break
            return f"{path}:{frame['line']} {frame['name']}"
    return "(other)"


def replay(trace, base: int):
    """(peak bytes, index of the event that reached it, live blocks then: addr -> (size, frames))."""
    current, peak, at = base, base, -1
    sizes = {}
    for i, event in enumerate(trace):
        if event["action"] == "alloc":
            current += event["size"]
            sizes[event["addr"]] = event["size"]
            if current > peak:
                peak, at = current, i
        elif event["action"] == "free_completed":
            current -= sizes.pop(event["addr"], event["size"])
    live = {}
    for event in trace[: at + 1]:
        if event["action"] == "alloc":
            live[event["addr"]] = (event["size"], event.get("frames", []))
        elif event["action"] == "free_completed":
            live.pop(event["addr"], None)
    return peak, at, live


def answer_once(engine, request, fast: bool, label: str, top: int) -> None:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(max_entries=2_000_000, context="alloc", stacks="python")
    engine.generate(request, fast=fast)
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    trace = snapshot["device_traces"][torch.cuda.current_device()]
    peak, at, live = replay(trace, base)
    print(
        f"\n== {label}: max_memory_allocated {torch.cuda.max_memory_allocated() / 1e9:.3f} GB; replayed peak "
        f"{peak / 1e9:.3f} GB at event {at} of {len(trace)}; allocated before the answer {base / 1e9:.3f} GB"
    )
    by_line = collections.Counter()
    for size, frames in live.values():
        by_line[where(frames)] += size
    print(
        f"  live at the peak, by allocating line ({len(live)} blocks, {sum(s for s, _ in live.values()) / 1e9:.3f} GB):"
    )
    for line, size in by_line.most_common(top):
        print(f"  {size / 1e6:10.1f} MB  {line}")
    print("  the largest live blocks:")
    for size, frames in sorted(live.values(), key=lambda v: -v[0])[:top]:
        print(f"  {size / 1e6:10.1f} MB  {where(frames)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    request_options(parser, frames=64, max_tokens=256, model="random:7b")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("memory_peak.py needs a CUDA GPU")

    from qvl.bench import PROMPT, SAMPLE_FPS, SIDE, write_video
    from qvl.engine import Engine, Request, VideoFrames
    from qvl.media.video import MAX_FRAMES, VideoOptions, load_video

    engine = Engine(args.model, device="cuda", native=False, progress=False)
    with tempfile.TemporaryDirectory() as folder:
        video = write_video(Path(folder) / "v.mp4", args.frames / SAMPLE_FPS)
        options = VideoOptions(frames=args.frames, max_pixels=SIDE * SIDE, max_frames=max(args.frames, MAX_FRAMES))
        clip = load_video(video, options, cache=None)
    request = Request(PROMPT, video=VideoFrames(clip.frames, clip.sampled_fps), max_new_tokens=args.max_tokens)
    print(f"{engine.name} on {torch.cuda.get_device_name()}: weights {torch.cuda.memory_allocated() / 1e9:.3f} GB")
    for name, fast in (("stock", False), ("qvl", True)):
        for when in ("cold", "warm"):
            answer_once(engine, request, fast, f"{name} {when}", args.top)


if __name__ == "__main__":
    main()
