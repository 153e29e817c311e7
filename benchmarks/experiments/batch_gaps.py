"""Where the GPU waits during `qvl batch`'s steady state: its idle gaps, and what the host did then.

    PYTHONPATH=. python3 benchmarks/experiments/batch_gaps.py [--videos 48] [--after 16] [--profiled 8]
        [--switch-interval-ms 5] [--ahead 1] [--torch-threads N]

`qvl batch` keeps the GPU busy ~92% of the time once answering (docs/benchmarks.md); this finds
the other 8%. It runs the batch's own loop (`qvl.batch.local.answer_rows`, CPU workers decoding
ahead) in this process over synthetic 16-frame videos, lets `--after` rows pass, then records
`--profiled` rows with torch's profiler while the workers go on decoding the rows after them (as
in a long job: profiling the last rows, which were all decoded already, shows a GPU busier than
a real job's). `--switch-interval-ms` sets Python's thread switch interval (5 ms by default): how
long the thread that feeds the GPU may wait for the GIL while a worker holds it; `--ahead` how
many decode steps the host queues past the one whose token it reads (the engine's default: 1);
`--torch-threads` torch's CPU threads (by default one per core, in each worker running the
processor, beside the decoding threads: the thread feeding the GPU may wait for a core).
The engine's steps are labelled by wrapping them in `record_function` (this experiment's doing;
the product has no such switch). From the trace: the GPU's kernel intervals merged, every gap
between them of at least `--min-gap-us`, and for each gap the innermost labelled host step
running when it began. Printed: the busy fraction of
the profiled span, the idle time per label, and the largest gaps.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from common import request_options  # noqa: E402  (importing it puts the repository on sys.path)

STEPS = [  # (module, owner attribute path, label)
    ("qvl.runner", "Runner.run", "runner.run"),
    ("qvl.runner", "Runner.prepare", "runner.prepare (processor)"),
    ("qvl.engine", "Engine.generate", "engine.generate"),
    ("qvl.engine.generate", "FastGenerator.generate", "fast generate"),
    ("qvl.engine.generate", "decode", "decode"),
    ("qvl.engine.generate", "_loop", "decode loop"),
    ("qvl.engine.generate", "first_token", "first token"),
    ("qvl.engine.prefill", "prefill", "prefill (tower + LM)"),
    ("qvl.batch.work", "answer", "batch answer"),
]


def video_rows(folder: Path, seeds, frames: int, side: int) -> list:
    """A batch's rows over synthetic videos of `frames` frames at `side` x `side` written into
    `folder`, one per seed (a new seed, a new file: nothing decoded before is reused)."""
    from qvl.batch.inputs import expand
    from qvl.bench import SOURCE_FPS, write_video
    from qvl.options import video_options

    videos = [
        write_video(folder / f"v{i:05d}.mp4", frames / SOURCE_FPS, side=side, fps=SOURCE_FPS, seed=i) for i in seeds
    ]
    return expand([str(v) for v in videos], video_options(frames=frames), prompts={"video": "Describe this video."})


def label_steps() -> None:
    import importlib

    for module_name, path, label in STEPS:
        module = importlib.import_module(module_name)
        owner, _, name = path.rpartition(".")
        target = getattr(module, owner) if owner else module
        original = getattr(target, name)

        @functools.wraps(original)
        def labelled(*args, __original=original, __label=label, **kwargs):
            with torch.profiler.record_function(__label):
                return __original(*args, **kwargs)

        setattr(target, name, labelled)


def gaps(events, min_gap_us: float):
    """(busy fraction, [(gap_us, start_us)]) from the profiler's device kernel events."""
    kernels = sorted(
        (e.time_range.start, e.time_range.end)
        for e in events
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start
    )
    if not kernels:
        return None, []
    merged = [list(kernels[0])]
    for start, end in kernels[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    span = merged[-1][1] - merged[0][0]
    busy = sum(end - start for start, end in merged)
    found = [(b[0] - a[1], a[1]) for a, b in zip(merged, merged[1:]) if b[0] - a[1] >= min_gap_us]
    return busy / span, found


def host_step_at(events, t: float) -> str:
    """The innermost labelled host range covering time `t`."""
    labels = {label for _, _, label in STEPS}
    covering = [
        e
        for e in events
        if e.device_type == torch.autograd.DeviceType.CPU
        and e.name in labels
        and e.time_range.start <= t <= e.time_range.end
    ]
    if not covering:
        return "(between labelled steps)"
    return min(covering, key=lambda e: e.time_range.end - e.time_range.start).name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    request_options(parser, frames=16, max_tokens=64)
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--after", type=int, default=16, help="rows answered before the profile starts")
    parser.add_argument("--profiled", type=int, default=8, help="rows recorded; the rest are still decoding")
    parser.add_argument("--switch-interval-ms", type=float, default=None)
    parser.add_argument("--ahead", type=int, default=None, help="decode steps queued ahead (default: the engine's)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--side", type=int, default=448)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--min-gap-us", type=float, default=50.0)
    args = parser.parse_args()

    from qvl.batch.local import answer_rows
    from qvl.bench import default_model
    from qvl.runner import Runner, Settings, frame_cache

    cuda = torch.cuda.is_available()
    model = args.model or default_model("cuda" if cuda else "cpu")
    rows = video_rows(Path(tempfile.mkdtemp(prefix="qvl-batch-gaps-")), range(args.videos), args.frames, args.side)
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    if args.ahead is not None:
        import qvl.engine.generate

        qvl.engine.generate._loop = functools.partial(qvl.engine.generate._loop, ahead=args.ahead)
    label_steps()
    runner = Runner(Settings(model=model, max_tokens=args.max_tokens))
    records = answer_rows(runner, rows, frame_cache(enabled=False), workers=args.workers, prefetch=2 * args.workers)
    if args.after + args.profiled > len(rows):
        raise SystemExit("--after + --profiled must not exceed --videos")
    for _ in range(args.after):
        next(records)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        answered = [next(records) for _ in range(args.profiled)]
    records.close()  # the rows not answered are dropped
    failed = [r for r in answered if r["error"] is not None]
    left = len(rows) - args.after - args.profiled
    interval = sys.getswitchinterval() * 1000
    print(
        f"{model}: {len(answered)} rows profiled after {args.after}, {left} still ahead; {len(failed)} failed; "
        f"switch interval {interval:g} ms; decode steps ahead: {'default' if args.ahead is None else args.ahead}; "
        f"torch threads {torch.get_num_threads()} of {os.cpu_count()} cores"
    )
    events = prof.events()
    busy, found = gaps(events, args.min_gap_us)
    if busy is None:
        print("no GPU kernels recorded (no CUDA device): nothing to attribute")
        return
    print(f"GPU busy over the profiled span: {busy:.1%}; {len(found)} gaps of >= {args.min_gap_us:.0f} us")
    report(found, lambda t: host_step_at(events, t), len(answered))


def report(found, step_at, rows: int, largest: int = 10) -> None:
    """The idle time of `found` gaps ((gap_us, start_us)) by the host step `step_at(start)` names,
    per row too, then the `largest` gaps."""
    by_step = collections.Counter()
    for gap_us, start in found:
        by_step[step_at(start)] += gap_us
    print(f"{'host step when the GPU went idle':<40} {'idle ms':>9} {'per row':>9}")
    for step, us in by_step.most_common():
        print(f"{step:<40} {us / 1000:>9.2f} {us / 1000 / rows:>9.2f}")
    print("largest gaps:")
    for gap_us, start in sorted(found, reverse=True)[:largest]:
        print(f"  {gap_us / 1000:8.2f} ms  during {step_at(start)}")


if __name__ == "__main__":
    main()
