"""Ask again without waiting: the time to first token of later questions about one video against
the first's, and against asking each question in a fresh request.

    PYTHONPATH=. python3 benchmarks/bench_session.py [--model random:7b] [--frames 256] [--questions 4]
                                                     [--max-tokens 32] [--out bench-out/session.json]

One engine, one synthetic video (448x448 frames after extraction). A fresh request is answered
twice first (the second is the warm figure: kernels compiled, decode graph captured). Then a
session is opened (processor, vision tower and the media's prefill, once) and asked `--questions`
questions. The first question's time to first token counts the session's opening; later ones
count only their own processor and prefill. Greedy tokens of each question are compared with a
fresh request for the same question (`agree`: leading tokens equal). Peak GPU memory of the
fresh request and of the session are reported with the session's kept KV cache.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from common import request_options, sync, synthetic_video, write_results

QUESTIONS = [
    "Describe this video.",
    "What happens at the end?",
    "How many people are there, and what are they wearing?",
    "Summarise the video in one sentence, then list every object you can see in it, one per line.",
]


def _leading_equal(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    request_options(parser, frames=256, max_tokens=32, model="random:7b")
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--out", default="bench-out/session.json")
    args = parser.parse_args()

    from qvl.engine import Engine, Request

    engine = Engine(args.model)
    video = synthetic_video(args.frames)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.questions)]

    def fresh(prompt: str):
        sync()
        return engine.generate(Request(prompt, video=video, max_new_tokens=args.max_tokens))

    fresh(questions[0])  # warm-up: kernels, the decode graph of this cache size
    _peak_reset()
    fresh_results = [fresh(q) for q in questions]
    fresh_peak = _peak_gb()
    warm = fresh_results[0].timings
    fresh_ttft = warm.preprocess_s + warm.prefill_s

    _peak_reset()
    sync()
    started = time.perf_counter()
    session = engine.session(video=video)
    sync()
    opened_s = time.perf_counter() - started
    rows = []
    for index, (question, reference) in enumerate(zip(questions, fresh_results)):
        result = session.ask(question, max_new_tokens=args.max_tokens)
        t = result.timings
        ttft = t.preprocess_s + t.prefill_s + (opened_s if index == 0 else 0.0)
        rows.append(
            dict(
                question=index + 1,
                prompt_tokens=result.prompt_tokens,
                ttft_s=round(ttft, 4),
                fresh_ttft_s=round(reference.timings.preprocess_s + reference.timings.prefill_s, 4),
                tokens_per_s=round(t.tokens_per_s, 1),
                agree=_leading_equal(result.tokens, reference.tokens),
                generated=result.generated_tokens,
            )
        )
        print(rows[-1], file=sys.stderr, flush=True)
    first = rows[0]["ttft_s"]
    for row in rows:
        row["of_first"] = round(row["ttft_s"] / first, 4)
    session_peak = _peak_gb()

    print(
        f"{args.model}, {args.frames} frames, {rows[0]['prompt_tokens']:,} tokens; warm fresh request TTFT {fresh_ttft:.3f} s"
    )
    print(f"session opened in {opened_s:.3f} s, keeps {session.cache_bytes / 1e9:.2f} GB of KV cache")
    print(f"{'question':>8} {'TTFT s':>8} {'of first':>8} {'fresh TTFT s':>12} {'tok/s':>7} {'agree':>9}")
    for r in rows:
        agree = f"{r['agree']}/{r['generated']}"
        print(
            f"{r['question']:>8} {r['ttft_s']:>8.3f} {r['of_first']:>8.1%} {r['fresh_ttft_s']:>12.3f} "
            f"{r['tokens_per_s']:>7.1f} {agree:>9}"
        )
    print(f"peak GPU memory: fresh requests {fresh_peak} GB, session {session_peak} GB")
    write_results(
        Path(args.out),
        rows,
        model=args.model,
        frames=args.frames,
        max_tokens=args.max_tokens,
        session_open_s=round(opened_s, 4),
        cache_gb=round(session.cache_bytes / 1e9, 3),
        fresh_warm_ttft_s=round(fresh_ttft, 4),
        fresh_peak_gb=fresh_peak,
        session_peak_gb=session_peak,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
