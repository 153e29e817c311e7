"""Where the GPU waits in a whole `qvl batch` job: `qvl.batch.run` (what the command runs: the
results file, the view, rows decoded together by default) in this process, profiled from its
`--after`-th record to its `--after + --profiled`-th while the job goes on around it.

    PYTHONPATH=. python3 benchmarks/experiments/batch_job_gaps.py [--videos 80] [--after 24] [--profiled 16]

`batch_gaps.py` profiles the rows' own loop; this one the command's job around it, and reads the
GPU as NVML does (kernels only) and with copies and fills counted as busy: a copy from pageable
host memory holds the thread that feeds the GPU and leaves the GPU without a kernel. Printed: both
busy fractions over the profiled span beside NVML's reading of the same seconds (sampled every
0.1 s as bench_batch.py samples it), the host-to-device copies (count, bytes, time, kind), the
idle time by the innermost labelled step of the thread driving the GPU when each gap began, and
the largest gaps.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from batch_gaps import STEPS, label_steps, report, request_options, video_rows  # noqa: E402

STEPS += [
    ("qvl.batch.local", "answer_together", "batch answer together"),
    ("qvl.batch.local", "answer", "batch answer (one row)"),
    ("qvl.engine", "Engine.generate_batch", "engine.generate_batch"),
    ("qvl.engine.generate", "FastGenerator.generate_rows", "generate_rows"),
    ("qvl.engine.generate", "_run_steps", "decode steps"),
    ("qvl.engine.generate", "result_of", "result_of (detokenize)"),
    ("qvl.runner", "Runner.answered", "runner.answered (record)"),
    ("qvl.batch.results", "Results.append", "results.append"),
    ("concurrent.futures", "Future.result", "wait for a row's media"),
]


def intervals(events, kinds) -> list[list[float]]:
    spans = sorted(
        (e.time_range.start, e.time_range.end)
        for e in events
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start and kinds(e.name)
    )
    merged: list[list[float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def is_copy(name: str) -> bool:
    return name.startswith(("Memcpy", "Memset"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    request_options(parser, frames=16, max_tokens=64)
    parser.add_argument("--videos", type=int, default=80)
    parser.add_argument("--after", type=int, default=24)
    parser.add_argument("--profiled", type=int, default=16)
    parser.add_argument("--side", type=int, default=448)
    parser.add_argument("--min-gap-us", type=float, default=50.0)
    args = parser.parse_args()
    if args.after + args.profiled > args.videos:
        raise SystemExit("--after + --profiled must not exceed --videos")

    from qvl import batch
    from qvl.bench import default_model
    from qvl.option_groups import CacheSettings
    from qvl.runner import Settings

    cuda = torch.cuda.is_available()
    model = args.model or default_model("cuda" if cuda else "cpu")
    folder = Path(tempfile.mkdtemp(prefix="qvl-batch-job-gaps-"))
    rows = video_rows(folder, range(args.videos), args.frames, args.side)
    label_steps()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    prof = torch.profiler.profile(activities=activities)
    window = {}

    class Window(batch.BatchView):
        answered_rows = 0

        def answered(self, record) -> None:
            self.answered_rows += 1
            if self.answered_rows == args.after:
                window["start"] = time.perf_counter()
                prof.start()
            elif self.answered_rows == args.after + args.profiled:
                prof.stop()
                window["end"] = time.perf_counter()

    samples, stop = [], threading.Event()

    def sample() -> None:
        while cuda and not stop.is_set():
            samples.append((time.perf_counter(), torch.cuda.utilization(0) / 100))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    options = batch.BatchOptions(out=str(folder / "results.jsonl"), cache=CacheSettings(enabled=False))
    code = batch.run(rows, Settings(model=model, max_tokens=args.max_tokens), options, Window())
    wall = time.perf_counter() - started
    stop.set()
    print(
        f"{model}: {len(rows)} rows in {wall:.1f} s (exit {code}); rows {args.after + 1}-{args.after + args.profiled} "
        f"profiled over {window['end'] - window['start']:.2f} s"
    )
    events = prof.events()
    kernels = intervals(events, lambda name: not is_copy(name))
    if not kernels:
        print("no GPU kernels recorded (no CUDA device): nothing to attribute")
        return
    everything = intervals(events, lambda name: True)
    for text, spans in (("kernels only (as NVML reads)", kernels), ("kernels, copies and fills", everything)):
        span = spans[-1][1] - spans[0][0]
        busy = sum(end - start for start, end in spans)
        print(f"GPU busy, {text}: {busy / span:.1%} of {span / 1e6:.2f} s")
    # The kernels run until the profile stops; its start (CUPTI's set-up) is the window's first part.
    seconds = (kernels[-1][1] - kernels[0][0]) / 1e6
    read = [u for t, u in samples if window["end"] - seconds + 0.2 <= t <= window["end"]]
    if read:
        print(f"NVML over the same {seconds:.2f} s: {statistics.fmean(read):.1%} ({len(read)} samples)")
    copies = collections.defaultdict(lambda: [0, 0.0, 0])
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA and is_copy(e.name):
            entry = copies[e.name]
            entry[0] += 1
            entry[1] += e.time_range.end - e.time_range.start
    print(f"{'copies and fills':<48} {'count':>6} {'ms':>8} {'ms/row':>8}")
    for name, (count, us, _) in sorted(copies.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:<48} {count:>6} {us / 1000:>8.2f} {us / 1000 / args.profiled:>8.2f}")

    driver = next((e.thread for e in events if e.name == "batch answer together"), None)
    labels = {text for _, _, text in STEPS}
    host = [
        e
        for e in events
        if e.device_type == torch.autograd.DeviceType.CPU
        and e.name in labels
        and (driver is None or e.thread == driver)
    ]

    def step_at(t: float) -> str:
        covering = [e for e in host if e.time_range.start <= t <= e.time_range.end]
        if not covering:
            return "(between labelled steps)"
        return min(covering, key=lambda e: e.time_range.end - e.time_range.start).name

    found = [(b[0] - a[1], a[1]) for a, b in zip(kernels, kernels[1:]) if b[0] - a[1] >= args.min_gap_us]
    print(f"{len(found)} gaps of >= {args.min_gap_us:.0f} us between kernels")
    report(found, step_at, args.profiled, largest=12)


if __name__ == "__main__":
    main()
