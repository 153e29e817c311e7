"""The whole wait for one video question, transformers' stock path against qvl's fast path, in one run.

    PYTHONPATH=. python3 benchmarks/bench_e2e.py [--model random:7b] [--frames 64,256] [--max-tokens 256]
                                                 [--repeat 2] [--dtype auto|float32] [--out bench-out/e2e.json]

What `qvl bench` measures (qvl.bench: frame extraction, the processor, the vision tower alone and
against an fp32 tower, time to first token, decode tokens/s, cold and warm answers, peak GPU
memory, greedy agreement), with the card and versions, as a table and one JSON file for
docs/benchmarks.md. `--dtype float32` checks the decode loop token for token on a full-size model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import write_results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:7b")
    parser.add_argument("--frames", default="64,256")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", default="bench-out/e2e.json")
    args = parser.parse_args()

    from qvl import output
    from qvl.bench import BenchConfig, run

    config = BenchConfig.parse(
        model=args.model, frames=args.frames, max_tokens=args.max_tokens, repeat=args.repeat, dtype=args.dtype
    )
    records = []
    for record in run(config, note=lambda text: print(text, file=sys.stderr, flush=True)):
        output.bench_table(record)
        records.append(record)
    write_results(Path(args.out), records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
