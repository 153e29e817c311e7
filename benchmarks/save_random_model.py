"""Write a random:<preset> model to a folder as an ordinary checkpoint (safetensors, tokenizer,
processor), so that the CLI's real loading path can be timed without downloading weights.

    PYTHONPATH=. python3 benchmarks/save_random_model.py random:7b /tmp/random-7b
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="random:3b, random:7b or random:72b")
    parser.add_argument("folder")
    args = parser.parse_args()

    from qvl.engine import Engine

    started = time.perf_counter()
    engine = Engine(args.model)
    out = Path(args.folder)
    engine.model.save_pretrained(out)
    for name in engine.resolved.path.iterdir():  # tokenizer, processor and generation config
        if name.is_file() and not name.name.endswith((".safetensors", ".json.index")) and name.name != "config.json":
            shutil.copy(name, out / name.name)
    print(f"{args.model} written to {out} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
