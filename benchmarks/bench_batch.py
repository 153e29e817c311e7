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
in a thread; null on a machine without a GPU), and when the first answer came. Prints a table
and writes JSON.
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
            "gpu_busy_after_first_answer": sampler.busy_fraction(after_first_answer=True),
            "gpu_samples": len(sampler.samples),
            "first_answer_s": None if sampler.first_answer_s is None else round(sampler.first_answer_s, 2),
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
    seconds in a thread while in the `with` block (no samples without a GPU). `answers`: the results
    file, whose first line marks the first answer (`first_answer`: that sample's index,
    `first_answer_s`: its time from the start)."""

    def __init__(self, cuda: bool, period: float = 0.1, answers: Path | None = None):
        self.period, self.samples, self.answers, self.first_answer = period, [], answers, None
        self.started = self.first_answer_s = None
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

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            value = self.read() if self.read is not None else None
            if value is not None:
                self.samples.append(value)
            if self.first_answer is None and self.answers is not None and _has_content(self.answers):
                self.first_answer = len(self.samples)
                self.first_answer_s = time.perf_counter() - self.started

    def busy_fraction(self, after_first_answer: bool = False) -> float | None:
        samples = self.samples[self.first_answer or 0 :] if after_first_answer else self.samples
        if after_first_answer and self.first_answer is None:
            return None
        return round(statistics.fmean(samples) / 100, 3) if samples else None


def _has_content(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


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
    out.add_row("qvl video loop", f"{row['loop_videos_per_min']:.1f}", f"{row['loop_s_per_video']:.3f}", "n/a")
    out.add_row("speed-up", f"{row['speedup']:.2f}x", "", "")
    Console(highlight=False).print(out)


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
