"""Warps per row of the Triton level-mask kernel, on one GPU, same run.

    PYTHONPATH=. python3 benchmarks/experiments/variants_level_mask.py [--lengths 16,32,64,128] [--warps 4,1,2,8]
        [--split 0,1] [--out bench-out/variants_level_mask.json]

7B attention shape (28 query heads, 4 KV heads, block 128): random skewed scores [1, 28, nb, nb]
(uniform cubed, like softmax mass), a random similarity cap, the `fast` preset's topk bands,
causal. Variants: warps per row, and SPLIT (short causal rows sort a half or a quarter of the
keys) off and on. One launch of `_level_mask_kernel` per variant (what `level_mask_triton` runs), median ms
of CUDA events; every variant's levels must equal the first one's bit for bit. The first warp
count is timed again at the end (the spread between runs shows there). Writes a table to stdout
and every number to --out. Under a minute on an H200.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common.py
from common import timed, write_results  # noqa: E402  (same timing as the main benchmark)

from qvl_kernels.level_mask.naive import check_args  # noqa: E402
from qvl_kernels.psa import PSAConfig  # noqa: E402

LM = importlib.import_module("qvl_kernels.level_mask.triton")  # the module, not the function
HQ, HKV, BLOCK = 28, 4, 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16,32,64,128", help="thousands of tokens (x1024), comma-separated")
    parser.add_argument("--warps", default="4,1,2,8", help="warp counts to time, comma-separated")
    parser.add_argument(
        "--split",
        default="0,1",
        help="1: short causal rows sort a half or a quarter of the keys (SPLIT); 0: every row sorts all",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-out/variants_level_mask.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("variants_level_mask.py needs a CUDA GPU")
    warps = [int(w) for w in args.warps.split(",")]
    splits = [bool(int(x)) for x in args.split.split(",")]
    ratios = PSAConfig.preset("fast").ratios
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for L in (int(x) * 1024 for x in args.lengths.split(",")):
        nb = L // BLOCK
        scores = torch.rand(1, HQ, nb, nb, device="cuda", generator=g) ** 3
        levels = torch.tensor([1, 2, 4, 8], dtype=torch.int8, device="cuda")
        cap = levels[torch.randint(0, 4, (1, HKV, nb), device="cuda", generator=g)]
        B, _, _, bands = check_args(scores, cap, "topk", ratios, 0)
        table = LM._band_tensor(bands, scores.device)
        BNB = max(16, 1 << (nb - 1).bit_length())
        ref = None
        split_default = BNB >= LM.SPLIT_MIN
        for w, split in [(w, sp) for sp in splits for w in warps] + [(warps[0], splits[0])]:
            out = torch.empty(B, HQ, nb, nb, device="cuda", dtype=torch.int8)

            def run():
                LM._level_mask_kernel[(nb, B * HQ)](
                    scores,
                    cap,
                    table,
                    out,
                    out,
                    scores.stride(0),
                    scores.stride(1),
                    scores.stride(2),
                    HQ,
                    nb,
                    0,
                    HQ // HKV,
                    HAS_CAP=True,
                    HAS_COUNTS=False,
                    NBANDS=len(bands),
                    TOPK=True,
                    CAUSAL=True,
                    BNB=BNB,
                    SPLIT=split,
                    num_warps=w,
                )

            ms = timed(run)
            ref = out.clone() if ref is None else ref
            same = bool(torch.equal(out, ref))
            default = w == LM._warps(BNB) and split == split_default
            rows.append(dict(L=L, nb=nb, warps=w, split=split, ms=ms, same=same, default=default))
            print(
                f"L={L:>6} nb={nb:>4} warps={w} split={int(split)}: {ms:.3f} ms  levels as the first: {same}"
                f"{'  (the default)' if default else ''}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_results(args.out, rows, heads=dict(HQ=HQ, HKV=HKV), block=BLOCK)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
