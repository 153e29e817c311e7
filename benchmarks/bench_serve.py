"""What a resident `qvl serve` saves: a repeated `qvl video` question through the server against the
same request in a warm process, and many clients at once against one at a time.

    PYTHONPATH=. python3 benchmarks/bench_serve.py [--model random:7b] [--frames 64] [--max-tokens 128]
                                                   [--clients 16] [--videos 4] [--rounds 2] [--side 448]
                                                   [--out bench-out/serve.json]
    PYTHONPATH=. python3 benchmarks/bench_serve.py --model tiny --frames 8 --max-tokens 16 --side 112  # CPU

(a) `qvl video clip.mp4 --frames F --max-tokens T --json` as a user runs it: a fresh process that
    loads the model; the same command with QVL_SERVER set, the first time (the server decodes and
    prefills the uploaded video) and the second (its session is kept: only the question is
    prefilled); and the same request answered in this process with the model loaded and the frames
    cached (`Runner.run`, the second of two).
(b) --clients threads, each asking --rounds questions about --videos synthetic videos whose
    sessions the server already keeps (local paths, --allow-local-files): errors, p50/p95 latency
    and answers per second, beside the same requests sent one at a time.

The server is a subprocess (`python -m qvl serve`), with its own frame cache; the videos are
written with PyAV (qvl.bench.write_video). A table on stdout and one JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import ROOT, request_options, write_results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    request_options(parser, frames=64, max_tokens=128)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="questions per client in (b)")
    parser.add_argument("--side", type=int, default=448, help="synthetic videos' frame side in pixels")
    parser.add_argument("--out", default="bench-out/serve.json")
    args = parser.parse_args()

    import torch

    from qvl.bench import default_model

    model = args.model or default_model("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="qvl-bench-serve-") as folder:
        folder = Path(folder)
        os.environ["QVL_CACHE_DIR"] = str(folder / "cache")  # this process, the server and the clients
        clip, videos = _write_videos(folder, args)
        warm, about = in_process(model, clip, args)
        fresh = timed_command(_video_command(clip, args, "--model", model), {})
        with Server(model) as server:
            through = [timed_command(_video_command(clip, args), {"QVL_SERVER": server.url}) for _ in range(2)]
            concurrent = clients(server.url, videos, args)
            health = server.health()
    record = {
        **about,
        "frames": args.frames,
        "max_tokens": args.max_tokens,
        "side": args.side,
        "repeat_question": {
            "fresh_process_s": fresh["seconds"],
            "server_first_s": through[0]["seconds"],
            "server_second_s": through[1]["seconds"],
            "in_process_warm_s": warm["seconds"],
            "same_text": bool(through[1]["row"]) and through[1]["row"]["text"] == warm["text"],
            "server_second_timings": through[1]["row"]["timings"] if through[1]["row"] else None,
            "in_process_warm_timings": warm["timings"],
        },
        "concurrent": concurrent,
        "server_sessions": health["sessions"],
    }
    table(record)
    write_results(Path(args.out), [record])
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _write_videos(folder: Path, args) -> tuple[Path, list[Path]]:
    """clip.mp4 for (a), and --videos more of different lengths (so different bytes) for (b)."""
    from qvl.bench import SAMPLE_FPS, write_video

    seconds = args.frames / SAMPLE_FPS + 1
    note(f"writing {args.videos + 1} synthetic videos ({args.side}x{args.side}, about {seconds:g} s)")
    clip = write_video(folder / "clip.mp4", seconds, side=args.side)
    videos = [write_video(folder / f"v{i}.mp4", seconds + 1 + i, side=args.side) for i in range(args.videos)]
    return clip, videos


def _video_command(clip: Path, args, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "qvl",
        "video",
        str(clip),
        "--frames",
        str(args.frames),
        "--max-tokens",
        str(args.max_tokens),
        "--json",
        "-q",
        *extra,
    ]


def timed_command(command: list[str], env: dict[str, str]) -> dict:
    """Wall time of a command as a user runs it, and its JSON row."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        note(f"{' '.join(command[2:])} failed: {done.stderr.strip()}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return {"seconds": round(seconds, 3), "row": rows[0] if rows else None}


def in_process(model: str, clip: Path, args) -> tuple[dict, dict]:
    """The same request twice in this process (model loaded, then frames cached): the second."""
    import torch

    from qvl.bench import machine
    from qvl.media.video import VideoOptions
    from qvl.runner import Runner, Settings, frame_cache, load_clip

    runner = Runner(Settings(model=model, max_tokens=args.max_tokens))
    options = VideoOptions(frames=args.frames)
    cache = frame_cache()
    for _ in range(2):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        row = runner.run(str(clip), "Describe this video.", lambda: load_clip(str(clip), options, cache))
        seconds = time.perf_counter() - started
    about = machine(runner.engine())
    del runner
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"seconds": round(seconds, 3), "text": row["text"], "timings": row["timings"]}, about


class Server:
    """`python -m qvl serve` on a free port, for the length of a `with`."""

    def __init__(self, model: str):
        self.model = model

    def __enter__(self):
        command = [sys.executable, "-m", "qvl", "serve", "--model", self.model, "--port", "0", "--allow-local-files"]
        env = {k: v for k, v in os.environ.items() if k != "QVL_API_KEY"}
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        note(f"starting {' '.join(command[2:])}")
        for line in self.process.stderr:
            found = re.search(r"serving \S+ on (http://\S+)/v1", line)
            if found:
                self.url = found.group(1)
                threading.Thread(target=self.process.stderr.read, daemon=True).start()
                return self
        raise RuntimeError("qvl serve did not start")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=120)

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health") as response:
            return json.loads(response.read())


def ask(url: str, video: Path, question: str, args) -> tuple[float, bool, int]:
    """(seconds, ok, cached prompt tokens) of one question about `video` by its path."""
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": str(video)}},
                    {"type": "text", "text": question},
                ],
            }
        ],
        "max_tokens": args.max_tokens,
        "frames": args.frames,
    }
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            reply = json.loads(response.read())
        cached = reply["usage"]["prompt_tokens_details"]["cached_tokens"]
        return time.perf_counter() - started, True, cached
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return time.perf_counter() - started, False, 0


def clients(url: str, videos: list[Path], args) -> dict:
    """(b): the kept sessions warmed, then every client's questions at once, then one at a time."""
    note(f"warming {len(videos)} sessions")
    for video in videos:
        ask(url, video, "Describe this video.", args)
    work = [(videos[(c + r) % len(videos)], f"Client {c}, question {r}: what happens?") for c in range(args.clients)
            for r in range(args.rounds)]  # fmt: skip

    def run(parallel: int) -> dict:
        started = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            results = list(pool.map(lambda item: ask(url, *item, args), work))
        wall = time.perf_counter() - started
        latencies = sorted(seconds for seconds, ok, _ in results if ok)
        return {
            "clients": parallel,
            "requests": len(results),
            "errors": sum(not ok for _, ok, _ in results),
            "session_hits": sum(cached > 0 for _, ok, cached in results if ok),
            "p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3) if latencies else None,
            "answers_per_s": round(len(latencies) / wall, 3),
            "wall_s": round(wall, 3),
        }

    note(f"{len(work)} questions from {args.clients} clients at once")
    together = run(args.clients)
    note(f"the same {len(work)} questions one at a time")
    return {"together": together, "one_at_a_time": run(1)}


def table(record: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    a, b = record["repeat_question"], record["concurrent"]
    title = (
        f"qvl serve: {record['model']} on {record['card']}, {record['frames']} frames "
        f"({record['side']}x{record['side']}), {record['max_tokens']} new tokens"
    )
    first = Table(title=title, title_justify="left")
    first.add_column("`qvl video clip.mp4` answered by")
    first.add_column("seconds", justify="right")
    first.add_row("a fresh process (loads the model)", f"{a['fresh_process_s']:.3f}")
    first.add_row("the server, first question", f"{a['server_first_s']:.3f}")
    first.add_row("the server, second question (session kept)", f"{a['server_second_s']:.3f}")
    first.add_row("this process, warm (frames cached)", f"{a['in_process_warm_s']:.3f}")
    second = Table(title=f"{b['together']['requests']} questions about kept videos", title_justify="left")
    for column in ("clients", "errors", "session hits", "p50 s", "p95 s", "answers/s", "wall s"):
        second.add_column(column, justify="right")
    for row in (b["together"], b["one_at_a_time"]):
        second.add_row(
            *(str(row[k]) for k in ("clients", "errors", "session_hits", "p50_s", "p95_s", "answers_per_s", "wall_s"))
        )
    console = Console(highlight=False)
    console.print(first)
    console.print(second)


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
