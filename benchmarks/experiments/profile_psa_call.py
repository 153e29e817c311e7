"""One psa_attention call for Nsight Compute, and a summary of ncu's SASS source page.

Profile (on a GPU; the call runs twice to compile and warm up, then once between
cudaProfilerStart/Stop, so `--profile-from-start off` catches only that one):

    ncu --clock-control none --profile-from-start off --set full --import-source yes \\
        -k regex:_xattn_kernel -o imp \\
        env PYTHONPATH=. python3 benchmarks/experiments/profile_psa_call.py --model 7b --length 64 --density 0.10
    ncu --import imp.ncu-rep --page source --csv --print-source sass > imp.csv

Summarize (anywhere; no GPU needed):

    python3 benchmarks/experiments/profile_psa_call.py --stalls imp.csv [--top 30] [--regions 200] [--out imp.json]

prints the warp-stall samples by reason, by region of consecutive SASS instructions (with the
instructions that mark it: QGMMA/HGMMA, BAR, MUFU.LG2, LDG, STG, EXIT), and the instructions with
the most samples. Session 9 found the importance kernel's pass 2 at 19% of its samples this way.
Inputs are common.py's video-like q/k/v, the topk bands scaled to the given density.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import sys
from pathlib import Path


def run_call(model: str, length_k: int, density: float, shape: str) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common.py
    from common import MODELS, calibrated_topk, video_inputs

    from qvl_kernels.psa import psa_attention

    HQ, HKV, D = MODELS[model]
    L = length_k * 1024
    q, k, v = video_inputs(1, HQ, HKV, L, D, seed=L + 7)
    cfg, achieved = calibrated_topk(q, k, density, shape)
    print(f"{model} L={L} topk density {achieved:.3f}", file=sys.stderr)
    for _ in range(2):
        psa_attention(q, k, v, cfg)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    psa_attention(q, k, v, cfg)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


def _int(x: str) -> int:
    return int(x) if x not in ("", "-") else 0


def stalls(path: Path, top: int, region: int) -> dict:
    rows = list(csv.reader(path.open()))
    header = next(r for r in rows if "Address" in r and "Source" in r)
    data = [r for r in rows[rows.index(header) + 1 :] if len(r) == len(header)]
    ix = {h: i for i, h in enumerate(header)}
    samples = ix["Warp Stall Sampling (All Samples)"]
    reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    total = sum(_int(r[samples]) for r in data) or 1

    by_reason = collections.Counter()
    for r in data:
        for h in reasons:
            by_reason[h[6:]] += _int(r[ix[h]])
    print(f"{path.name}: {len(data)} SASS instructions, {total} warp samples")
    for name, n in by_reason.most_common(10):
        print(f"  {name:<20} {n / total:6.1%}")

    def op(src: str) -> str:
        words = src.split()
        return words[1] if words and words[0].startswith("@") and len(words) > 1 else (words or [""])[0]

    marks = ("QGMMA", "HGMMA", "BAR", "MUFU.LG2", "LDG", "STG", "EXIT")
    regions = []
    print(f"\nby region of {region} instructions:")
    for a in range(0, len(data), region):
        chunk = data[a : a + region]
        share = sum(_int(r[samples]) for r in chunk) / total
        seen = sorted({op(r[ix["Source"]]).split(".")[0] for r in chunk if op(r[ix["Source"]]).startswith(marks)})
        regions.append(dict(first=a, last=a + len(chunk) - 1, share=share, marks=seen))
        print(f"  {a:5d}-{a + len(chunk) - 1:5d} {share:6.1%}  {' '.join(seen)}")

    hot = sorted(range(len(data)), key=lambda i: -_int(data[i][samples]))[:top]
    print(f"\ntop {top} instructions:")
    top_rows = []
    for i in sorted(hot):
        r = data[i]
        why = sorted(((_int(r[ix[h]]), h[6:]) for h in reasons), reverse=True)[:3]
        top_rows.append(
            dict(
                index=i,
                share=_int(r[samples]) / total,
                source=r[ix["Source"]].strip(),
                reasons={name: n for n, name in why if n},
            )
        )
        print(
            f"  {i:5d} {_int(r[samples]) / total:6.1%}  {r[ix['Source']].strip()[:64]:<64} "
            + " ".join(f"{name}:{n}" for n, name in why if n)
        )
    return dict(
        file=str(path),
        samples=total,
        reasons={k: v / total for k, v in by_reason.items()},
        regions=regions,
        top=top_rows,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="7b", choices=("7b", "3b"))
    ap.add_argument("--length", type=int, default=64, help="thousands of tokens (x1024)")
    ap.add_argument("--density", type=float, default=0.10, help="topk density the bands are scaled to")
    ap.add_argument("--shape", default="fast", help="band shape to scale (a PSAConfig preset: fast, balanced)")
    ap.add_argument("--stalls", type=Path, help="summarize this ncu source-page CSV instead of running")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--regions", type=int, default=200, help="instructions per region")
    ap.add_argument("--out", type=Path, help="write the summary as JSON")
    args = ap.parse_args()
    if args.stalls is None:
        run_call(args.model, args.length, args.density, args.shape)
        return
    if not args.stalls.is_file():
        sys.exit(f"profile_psa_call.py: no such file: {args.stalls}")
    summary = stalls(args.stalls, args.top, args.regions)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
