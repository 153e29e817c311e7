"""Whether decoding several answers together pays: `Engine.generate_batch` against one
`Engine.generate` after another, over the same short-video requests, in one process on one card.

    PYTHONPATH=. python3 benchmarks/experiments/batch_decode.py [--model random:7b] [--requests 8]
        [--frames 16] [--max-tokens 64] [--batch 2,4,8] [--out batch_decode.json]

Each request is `--frames` synthetic 448x448 frames with its own seed (prompts of the same length,
as `qvl batch` over one kind of clip has). Every way is run once untimed (graph capture), then
timed over all the requests: one at a time, and in groups of each `--batch` size. Printed: the
wall time, answers per minute and decode tokens/s of each, the peak GPU memory, and how many
answers equal the one-at-a-time answers (bf16 near-ties may part a random model's answers).
An experiment: `qvl batch` does not decode rows together yet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common.py
from common import request_options  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    request_options(parser, frames=16, max_tokens=64, model="random:7b")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--batch", default="2,4,8")
    parser.add_argument("--out", default="batch_decode.json")
    args = parser.parse_args()

    from qvl.engine import Engine, Request, VideoFrames

    engine = Engine(args.model)
    cuda = engine.device == "cuda"

    def request(seed: int) -> Request:
        small = np.random.default_rng(seed).integers(0, 255, (args.frames, 28, 28, 3), dtype=np.uint8)
        frames = np.repeat(np.repeat(small, 16, axis=1), 16, axis=2)
        return Request("Describe this video.", video=VideoFrames(frames, 2.0), max_new_tokens=args.max_tokens)

    requests = [request(seed) for seed in range(args.requests)]
    inputs = [engine.prepare(r, device="cpu") for r in requests]

    def one_at_a_time():
        return [engine.generate(r, inputs=x) for r, x in zip(requests, inputs)]

    def together(size: int):
        def run():
            results = []
            for start in range(0, len(requests), size):
                results += engine.generate_batch(requests[start : start + size], inputs[start : start + size])
            return results

        return run

    ways = [("one at a time", one_at_a_time)] + [(f"{n} together", together(n)) for n in _sizes(args.batch)]
    rows, reference = [], None
    for name, run in ways:
        run()  # untimed: graph capture for this size
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        results = run()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
        tokens = [r.tokens for r in results]
        reference = reference or tokens
        generated = sum(len(t) for t in tokens)
        rows.append(
            {
                "way": name,
                "wall_s": round(wall, 3),
                "answers_per_min": round(60 * len(results) / wall, 1),
                "tokens_per_s": round(generated / wall, 1),
                "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
                "same_answers": sum(a == b for a, b in zip(tokens, reference)),
            }
        )
        print(
            f"{name:<15} {wall:7.2f} s  {rows[-1]['answers_per_min']:7.1f} answers/min  "
            f"{rows[-1]['tokens_per_s']:7.1f} tokens/s  peak {rows[-1]['peak_gb']} GB  "
            f"same as one at a time: {rows[-1]['same_answers']}/{len(results)}"
        )
    meta = {
        "model": args.model,
        "card": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "requests": args.requests,
        "frames": args.frames,
        "max_tokens": args.max_tokens,
    }
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    main()
