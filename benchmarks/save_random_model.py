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

# The tiny model's files that a checkpoint folder needs besides its weights and config.
TOKENIZER_AND_PROCESSOR = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="random:3b, random:7b or random:72b")
    parser.add_argument("folder")
    args = parser.parse_args()

    from qvl.engine import Engine

    started = time.perf_counter()
    engine = Engine(args.model, native=False)  # save_pretrained: transformers' model
    out = Path(args.folder)
    engine.model.save_pretrained(out)
    for name in TOKENIZER_AND_PROCESSOR:
        if (engine.resolved.path / name).is_file():
            shutil.copy(engine.resolved.path / name, out / name)
    print(f"{args.model} written to {out} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
