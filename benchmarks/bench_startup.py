"""How fast `qvl --help` starts (target: under 0.5 s), against bare Python and an eager import.

    python benchmarks/bench_startup.py [--runs 15] [--out bench-out/startup.json]

Each command runs in a fresh process; the table shows the median and the spread of wall time.
The baselines in the same run: the interpreter alone, and what importing torch + transformers
would add if the CLI imported them eagerly.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "qvl --help": [sys.executable, "-m", "qvl", "--help"],
    "qvl --version": [sys.executable, "-m", "qvl", "--version"],
    "import torch, transformers (eager baseline)": [
        sys.executable,
        "-c",
        "import torch, transformers.models.qwen2_5_vl",
    ],
}
TARGET_S = 0.5


def time_command(argv: list[str], runs: int) -> list[float]:
    subprocess.run(argv, capture_output=True, check=True)  # warm the OS file cache
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("bench-out/startup.json"))
    args = parser.parse_args()

    rows = []
    for name, argv in COMMANDS.items():
        runs = args.runs if "eager" not in name else max(3, args.runs // 5)
        times = time_command(argv, runs)
        rows.append(
            {
                "command": name,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
                "runs": runs,
            }
        )

    print(f"{'command':<46} {'median s':>9} {'min s':>7} {'max s':>7}")
    for row in rows:
        print(f"{row['command']:<46} {row['median_s']:>9.3f} {row['min_s']:>7.3f} {row['max_s']:>7.3f}")
    help_row = next(r for r in rows if r["command"] == "qvl --help")
    verdict = "meets" if help_row["median_s"] < TARGET_S else "MISSES"
    print(f"qvl --help median {help_row['median_s']:.3f} s {verdict} the {TARGET_S} s target")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "target_s": TARGET_S,
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
