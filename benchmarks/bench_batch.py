"""`qvl batch` against a shell loop of `qvl video --json` over the same short videos, in one run.

    PYTHONPATH=. python3 benchmarks/bench_batch.py [--model random:7b] [--videos 200] [--frames 16]
        [--loop 10] [--max-tokens 64] [--gpus 1] [--workers N] [--batch-size N] [--side 448] [--out bench-out/batch.json]

Writes `--videos` synthetic videos of `--frames` frames with PyAV (no ffmpeg binary needed; MPEG-4
Part 2 where PyAV has no H.264), runs `qvl video` once untimed (as on a machine that has run qvl
before: the bytecode where qvl keeps it, Triton's kernels, the weights in the page cache), then
times, each as a user would run it (a `python -m qvl` process, the frame cache off, every frame
sampled):

- the batch: `qvl batch DIR --out results.jsonl` over all of them, model load included;
- the loop: `qvl video FILE --json` once per video over the first `--loop` of them (a process per
  video, as `for f in *.mp4; do qvl video "$f" --json; done` would), extrapolated per video.

Reports videos/min for both, the batch's own steady rate (its wall time less the model load), and
the GPU busy fraction over the batch's wall time and from its first answer on, which leaves out
the process start and the model load (torch.cuda.utilization or nvidia-smi, sampled every 0.1 s
in a thread; null on a machine without a GPU), when the first and the last answers came, the
GPU's idle seconds before, between and after them, its busy fraction second by second, and how
many rows waited for a decode step's CUDA graph to be captured.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import write_results

SOURCE_FPS = 8  # the synthetic videos' own rate: 16 frames are 2 s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: random:7b on CUDA, else tiny")
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--loop", type=int, default=10, help="videos the qvl video loop runs (extrapolated)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="qvl batch --batch-size (default: qvl's)")
    parser.add_argument("--side", type=int, default=448, help="frame side in pixels")
    parser.add_argument("--out", default="bench-out/batch.json")
    args = parser.parse_args()

    import torch

    from qvl.bench import default_model, write_video

    cuda = torch.cuda.is_available()
    model = args.model or default_model("cuda" if cuda else "cpu")
    common = ["-m", model, "--max-tokens", str(args.max_tokens), "--frames", str(args.frames), "--no-cache", "-q"]
    work = Path(tempfile.mkdtemp(prefix="qvl-bench-batch-"))
    try:
        folder = work / "videos"
        folder.mkdir()
        note(f"writing {args.videos} videos of {args.frames} frames ({args.side}x{args.side}) to {folder}")
        videos = [
            write_video(folder / f"v{i:05d}.mp4", args.frames / SOURCE_FPS, side=args.side, fps=SOURCE_FPS, seed=i)
            for i in range(args.videos)
        ]

        note("qvl video once, untimed")
        qvl(["video", str(videos[0]), "--json", *common], capture=True)
        note(f"qvl batch over {len(videos)} videos ({model})")
        batch_args = ["batch", str(folder), "--out", str(work / "results.jsonl"), "--gpus", str(args.gpus), *common]
        if args.workers:
            batch_args += ["--workers", str(args.workers)]
        if args.batch_size:
            batch_args += ["--batch-size", str(args.batch_size)]
        sampler = GpuSampler(cuda, answers=work / "results.jsonl")
        with sampler:
            batch_s = qvl(batch_args)
        records = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
        failed = [r for r in records if r["error"] is not None]
        if failed or len(records) != len(videos):
            raise SystemExit(f"the batch answered {len(records) - len(failed)} of {len(videos)}: {failed[:1]}")
        load_s = max(r["timings"]["load_s"] for r in records)
        first, last = sampler.first_answer_s, sampler.last_answer_s
        # A decode step's CUDA graph is captured once per decoder (a new batch size or cache size);
        # every row of a batch that captured one carries its seconds as warmup_s.
        captures = [r["timings"]["warmup_s"] for r in records if (r["timings"] or {}).get("warmup_s")]

        subset = videos[: args.loop]
        note(f"qvl video --json, one process per video, over {len(subset)} of them")
        loop_texts, loop_times = {}, []
        for video in subset:
            started = time.perf_counter()
            out = qvl(["video", str(video), "--json", *common], capture=True)
            loop_times.append(time.perf_counter() - started)
            loop_texts[str(video)] = json.loads(out)["text"]
        per_video = sum(loop_times) / len(loop_times)
        batch_texts = {r["input"]: r["text"] for r in records}

        row = {
            "model": model,
            "videos": len(videos),
            "frames": args.frames,
            "side": args.side,
            "max_tokens": args.max_tokens,
            "gpus": args.gpus,
            "batch_size": args.batch_size,
            "batch_s": round(batch_s, 3),
            "batch_load_s": round(load_s, 3),
            "batch_videos_per_min": round(60 * len(videos) / batch_s, 2),
            "batch_steady_videos_per_min": round(60 * len(videos) / max(batch_s - load_s, 1e-9), 2),
            "loop_videos": len(subset),
            "loop_s_per_video": round(per_video, 3),
            "loop_s_per_video_median": round(statistics.median(loop_times), 3),
            "loop_videos_per_min": round(60 / per_video, 2),
            "loop_extrapolated_s": round(per_video * len(videos), 1),
            "speedup": round(per_video * len(videos) / batch_s, 2),
            "gpu_busy_fraction": sampler.busy_fraction(),
            "gpu_busy_after_first_answer": None if first is None else sampler.busy_fraction(first),
            "gpu_busy_between_answers": None if first is None else sampler.busy_fraction(first, last),
            "gpu_idle_s": {
                "before_first_answer": sampler.idle_s(None, first),
                "between_answers": None if first is None else sampler.idle_s(first, last),
                "after_last_answer": None if last is None else sampler.idle_s(last),
            },
            "rows_after_a_graph_capture": len(captures),
            "graph_capture_s_max": round(max(captures, default=0.0), 3),
            "gpu_samples": len(sampler.samples),
            "gpu_busy_by_second": sampler.by_second(),
            "first_answer_s": None if first is None else round(first, 2),
            "last_answer_s": None if last is None else round(last, 2),
            "same_answers": sum(batch_texts.get(v) == t for v, t in loop_texts.items()),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table(row)
    write_results(Path(args.out), [row])
    note(f"wrote {args.out}")
    return 0


def qvl(args: list[str], capture: bool = False) -> float | str:
    """Run `python -m qvl ARGS` to the end: its stdout if `capture`, else its wall time."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "qvl", *args], stdout=subprocess.PIPE if capture else subprocess.DEVNULL, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"qvl {args[0]} exited with {done.returncode}")
    return done.stdout if capture else time.perf_counter() - started


class GpuSampler:
    """GPU utilisation (percent of the last sample period with a kernel running) every `period`
    seconds in a thread while in the `with` block (no utilisation without a GPU), beside the number
    of lines in `answers` (the results file) at that moment, to tell where the idle time is: before
    the first answer (the process's start, the model's load), between the first and the last, and
    after the last (the process's end)."""

    def __init__(self, cuda: bool, period: float = 0.1, answers: Path | None = None):
        self.period, self.answers = period, answers
        self.samples: list[tuple[float, float | None, int]] = []  # (seconds from the start, %, lines)
        self.started = None
        self.read = _utilization_reader() if cuda else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuSampler:
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.ended = time.perf_counter() - self.started

    def _run(self) -> None:
        lines, read = 0, 0  # the results file is append-only: only its new bytes are counted
        while not self._stop.wait(self.period):
            value = self.read() if self.read is not None else None
            new = _tail(self.answers, read)
            lines, read = lines + new.count(b"\n"), read + len(new)
            self.samples.append((time.perf_counter() - self.started, value, lines))

    @property
    def first_answer_s(self) -> float | None:
        return next((t for t, _, lines in self.samples if lines > 0), None)

    @property
    def last_answer_s(self) -> float | None:
        final = self.samples[-1][2] if self.samples else 0
        return next((t for t, _, lines in self.samples if lines == final), None) if final else None

    def _phase(self, start: float | None, end: float | None) -> list[float]:
        start, end = start or 0.0, float("inf") if end is None else end
        return [u for t, u, _ in self.samples if u is not None and start <= t < end]

    def busy_fraction(self, start: float | None = None, end: float | None = None) -> float | None:
        """The mean utilisation of the samples from `start` to `end` seconds (None: the ends)."""
        samples = self._phase(start, end)
        return round(statistics.fmean(samples) / 100, 3) if samples else None

    def by_second(self) -> list[float]:
        """The mean utilisation (0-1) of each whole second from the start."""
        seconds: dict[int, list[float]] = {}
        for t, u, _ in self.samples:
            if u is not None:
                seconds.setdefault(int(t), []).append(u)
        return [
            round(statistics.fmean(seconds[i]) / 100, 2) if i in seconds else None
            for i in range(max(seconds, default=-1) + 1)
        ]

    def idle_s(self, start: float | None = None, end: float | None = None) -> float | None:
        """Seconds of that span the GPU ran no kernel."""
        samples = self._phase(start, end)
        return round(sum(100 - u for u in samples) / 100 * self.period, 2) if samples else None


def _tail(path: Path | None, offset: int) -> bytes:
    """The bytes of `path` from `offset` on (none where it is not there yet)."""
    if path is None:
        return b""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""


def _utilization_reader():
    """A function returning the mean utilisation of the visible GPUs now, or None."""
    import torch

    try:
        torch.cuda.utilization(0)
        count = torch.cuda.device_count()
        return lambda: statistics.fmean(torch.cuda.utilization(i) for i in range(count))
    except Exception:  # no NVML binding in this environment: ask nvidia-smi
        pass
    if shutil.which("nvidia-smi") is None:
        return None

    def smi() -> float | None:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
        )
        values = [float(v) for v in done.stdout.split() if v.strip().replace(".", "", 1).isdigit()]
        return statistics.fmean(values) if values else None

    return smi


def table(row: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    busy = "n/a" if row["gpu_busy_fraction"] is None else f"{row['gpu_busy_fraction']:.0%}"
    after = row["gpu_busy_after_first_answer"]
    out = Table(
        title=f"{row['videos']} videos of {row['frames']} frames ({row['side']}x{row['side']}), {row['model']}, "
        f"{row['max_tokens']} new tokens at most",
        caption=f"loop: {row['loop_videos']} videos run, extrapolated; greedy answers equal in "
        f"{row['same_answers']} of them"
        + ("" if row["first_answer_s"] is None else f"; the batch's first answer after {row['first_answer_s']} s"),
        title_justify="left",
        caption_justify="left",
    )
    for column in ("", "videos/min", "s/video", "GPU busy"):
        out.add_column(column, justify="right")
    out.add_row(
        f"qvl batch (--gpus {row['gpus']}, --batch-size {row['batch_size'] or 'default'})",
        f"{row['batch_videos_per_min']:.1f}",
        f"{row['batch_s'] / row['videos']:.3f}",
        busy,
    )
    out.add_row(
        "  without the model load",
        f"{row['batch_steady_videos_per_min']:.1f}",
        "",
        "n/a" if after is None else f"{after:.0%}",
    )
    idle = row["gpu_idle_s"]
    if idle["before_first_answer"] is not None:
        out.add_row(
            "  GPU idle s: before the first answer / between / after the last",
            "",
            "",
            " / ".join("n/a" if idle[k] is None else f"{idle[k]:.2f}" for k in idle),
        )
    out.add_row("qvl video loop", f"{row['loop_videos_per_min']:.1f}", f"{row['loop_s_per_video']:.3f}", "n/a")
    out.add_row("speed-up", f"{row['speedup']:.2f}x", "", "")
    Console(highlight=False).print(out)


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
