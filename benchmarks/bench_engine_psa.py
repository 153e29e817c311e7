"""Time to first token of a long video, dense against PSA, through the engine's fast path.

    PYTHONPATH=. python3 benchmarks/bench_engine_psa.py [--model random:7b] [--frames 64,256,512,1024]
        [--variants fast-fixed,fast] [--repeat 2] [--out bench-out/engine_psa.json]

One engine (the model loaded with qvl's PSA attention for the language model) answers the same
synthetic-video request (448x448 frames after extraction: 256 tokens per frame pair) dense and
with each PSA variant, one new token each, so the figure is the time to first token: processor,
the fast vision tower and the language model's prefill. The first request of each variant at each
length runs apart (its Triton autotuning and compilation) and is reported as `first_s`; `warm_s`
is the median of `--repeat` more.

Variants: a preset name of `qvl_kernels.psa.PRESETS`, or `<preset>-fixed` for the preset's budget
without the key-similarity cap. With random weights the cap forbids most pooling (keys are not
alike), so the `-fixed` variants are what a fixed topk budget costs; the capped ones report what
a user's preset costs on such a model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from common import sync, synthetic_video, write_results


def variant_config(name: str, min_tokens: int):
    from qvl.psa import AttentionConfig

    preset, _, fixed = name.partition("-")
    if fixed not in ("", "fixed"):
        raise SystemExit(f"unknown variant {name!r}: a preset name, or <preset>-fixed")
    return AttentionConfig.preset(preset, use_similarity_cap=not fixed, min_tokens=min_tokens)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:7b")
    parser.add_argument("--frames", default="64,256,512,1024")
    parser.add_argument("--variants", default="fast-fixed,fast")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", default="bench-out/engine_psa.json")
    args = parser.parse_args()

    from qvl.engine import Engine, Request
    from qvl.psa import AttentionConfig

    configs = {name: variant_config(name, min_tokens=0) for name in args.variants.split(",")}
    engine = Engine(args.model, psa=AttentionConfig.preset("fast"))

    def ttft(request, psa_on: bool) -> tuple[float, object]:
        sync()
        started = time.perf_counter()
        result = engine.generate(request, psa=psa_on)
        sync()
        return time.perf_counter() - started, result

    rows = []
    for frames in (int(n) for n in args.frames.split(",")):
        request = Request("Describe this video.", video=synthetic_video(frames), max_new_tokens=1)
        for name in ["dense", *configs]:
            psa_on = name != "dense"
            if psa_on:
                engine.psa = configs[name]
            first, result = ttft(request, psa_on)
            warm = [ttft(request, psa_on)[0] for _ in range(args.repeat)]
            row = dict(
                frames=frames,
                tokens=result.prompt_tokens,
                variant=name,
                first_s=round(first, 4),
                warm_s=round(statistics.median(warm), 4),
                vision_s=round(result.timings.vision_s, 4),
                density=round(result.psa["density"], 4) if result.psa else None,
            )
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
        del request
        torch.cuda.empty_cache() if torch.cuda.is_available() else None

    dense = {r["frames"]: r["warm_s"] for r in rows if r["variant"] == "dense"}
    print(
        f"{'frames':>6} {'tokens':>8} {'variant':<12} {'first s':>8} {'warm s':>8} {'tower s':>8} {'density':>8} {'vs dense':>8}"
    )
    for r in rows:
        r["speedup"] = round(dense[r["frames"]] / r["warm_s"], 3)
        density = "-" if r["density"] is None else f"{r['density']:.3f}"
        print(
            f"{r['frames']:>6} {r['tokens']:>8,} {r['variant']:<12} {r['first_s']:>8.3f} {r['warm_s']:>8.3f} "
            f"{r['vision_s']:>8.3f} {density:>8} {r['speedup']:>7.2f}x"
        )
    write_results(Path(args.out), rows, model=args.model, repeat=args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
