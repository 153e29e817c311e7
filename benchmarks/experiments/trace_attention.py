"""Where the Gluon attention kernel's time goes inside one work item (H100/H200 only).

    PYTHONPATH=. python3 benchmarks/experiments/trace_attention.py [--lengths 16] [--baseline OLD_hopper.py] \
        [--out bench-out/trace_attention.json]

7B attention shape (HQ 28, HKV 4, D 128), bf16, causal, video-like inputs from common.py:

1. Cost model. Masks with the diagonal plus the k nearest blocks per row (k = 0..32), fixed
   d~0.1 masks and all level 1; times of the kernel `pyramid_attention` runs here, of the Triton
   kernel, and (--baseline) of another version of hopper.py loaded beside it, all in one run. A
   least-squares fit over the k masks, ms per SM = a * items per SM + b * tiles per SM, gives the
   fixed cost of a work item (128 query rows of one head) and the cost of a tile.
2. Trace. A copy of hopper.py with `%clock64` stamps (the SM's cycle counter) at fixed points of
   each work item: consumers at item start, Q ready, first step done, loop end, last P V done,
   O stored; the loader when it issued the item's first tile and its Q. Printed as mean cycles
   per phase and warpgroup; the loader's times are relative to the consumer's item start (same SM
   clock). The copy's output is checked against the kernel's.

The copy is made by text substitution (ANCHORS below); when hopper.py changes shape, it fails
naming the anchor it could not find. Prints a table, writes JSON. Found with it: benchmarks/NOTES-psa.md,
"Where the per-row cost went".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common.py
from common import fixed_levels, timed, video_inputs  # noqa: E402

from qvl_kernels.pooling import mean_pool  # noqa: E402
from qvl_kernels.pyramid_attention import (  # noqa: E402
    build_block_lists,  # noqa: E402
    hopper,
    pyramid_attention_triton,
)

HQ, HKV, D = 28, 4, 128
HOPPER = Path(__file__).resolve().parents[2] / "qvl_kernels" / "pyramid_attention" / "hopper.py"
CLK = 'gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l", [], dtype=gl.int64, is_pure=False, pack=1)'
SLOTS = 16  # per work item: consumer warpgroup w at 6 w + (0..5); the loader at 13 (tile 0 issued), 14 (Q issued)
PHASES = ["Q wait", "first step", "rest of loop", "last P V", "epilogue"]

# (anchor, replacement): each anchor must occur exactly `count` times in hopper.py.
ANCHORS = [
    (  # the kernel's signature
        "        IDX,\n        META,\n        s_qb,\n",
        "        IDX,\n        META,\n        TR,\n        s_qb,\n",
        1,
    ),
    (  # the consumer's signature
        "        O,\n        META,\n        s_ob,\n",
        "        O,\n        META,\n        TR,\n        s_ob,\n",
        1,
    ),
    (  # the two consumer partitions' arguments
        "                        O,\n                        META,\n                        s_ob,\n",
        "                        O,\n                        META,\n                        TR,\n                        s_ob,\n",
        2,
    ),
    (  # the launch
        "        idx,\n        meta,\n        q.stride(0),\n",
        "        idx,\n        meta,\n        TR,\n        q.stride(0),\n",
        1,
    ),
    (  # the loader partition's arguments
        "                        META,\n                        IDX,\n                        Q,\n",
        "                        META,\n                        IDX,\n                        TR,\n                        Q,\n",
        1,
    ),
    (  # the loader's signature
        "        bars_free,\n        META,\n        IDX,\n        Q,\n",
        "        bars_free,\n        META,\n        IDX,\n        TR,\n        Q,\n",
        1,
    ),
    (
        "            p_idx = IDX + i_row.to(gl.int64) * NB\n",
        f"            p_idx = IDX + i_row.to(gl.int64) * NB\n            p_tl = TR + w.to(gl.int64) * {SLOTS} + 12\n",
        1,
    ),
    (
        "                if pos == 0:\n",
        f"                gl.store(p_tl + 1, {CLK}, mask=pos == 0)\n                if pos == 0:\n",
        1,
    ),
    (
        "                    _issue_q(dq, q_bufs, bars_q, bars_qfree, n_q, i_b, i_h, i_m, Q_BYTES)\n"
        "                    n_q += 1\n            g0 += n_tiles\n",
        "                    _issue_q(dq, q_bufs, bars_q, bars_qfree, n_q, i_b, i_h, i_m, Q_BYTES)\n"
        f"                    n_q += 1\n                    gl.store(p_tl + 2, {CLK})\n            g0 += n_tiles\n",
        1,
    ),
    (
        "            row0 = i_m * 128 + WG * WM\n            o_m = ",
        f"            row0 = i_m * 128 + WG * WM\n            p_tr = TR + w.to(gl.int64) * {SLOTS} + WG * 6\n"
        f"            gl.store(p_tr, {CLK})\n            o_m = ",
        1,
    ),
    (
        "                mbarrier.wait(bar_q, n_q & 1)\n",
        f"                mbarrier.wait(bar_q, n_q & 1)\n                gl.store(p_tr + 1, {CLK})\n",
        1,
    ),
    (
        "                for pos in range(1, n_tiles):\n",
        f"                gl.store(p_tr + 2, {CLK})\n                for pos in range(1, n_tiles):\n",
        1,
    ),
    (
        "                # The last tile's P @ V, then its stage goes back too.\n",
        f"                gl.store(p_tr + 3, {CLK})\n                # The last tile's P @ V, then its stage goes back too.\n",
        1,
    ),
    (
        "                acc_o = warpgroup_mma_wait(0, deps=(acc_o, p_op))[0]\n                mbarrier.arrive(bars_free.index(s_last))\n",
        "                acc_o = warpgroup_mma_wait(0, deps=(acc_o, p_op))[0]\n                mbarrier.arrive(bars_free.index(s_last))\n"
        f"                gl.store(p_tr + 4, {CLK})\n",
        1,
    ),
    # the consumer's item end: its loop body is the last code before _issue_q's definition
    (
        "\n\n    @gluon.jit\n    def _issue_q(",
        f"\n            gl.store(p_tr + 5, {CLK})\n\n    @gluon.jit\n    def _issue_q(",
        1,
    ),
    ("_SM_COUNT: dict[int, int] = {}", "_SM_COUNT: dict[int, int] = {}\nTR = None  # set by trace_attention.py", 1),
]


def load_copy(src: str, name: str, tmp: str):
    """Import a copy of hopper.py's source as a stand-alone module (absolute imports)."""
    src = src.replace("from .._tma import", "from qvl_kernels._tma import")
    path = os.path.join(tmp, f"{name}.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def traced_source(src: str) -> str:
    for old, new, count in ANCHORS:
        if src.count(old) != count:
            raise SystemExit(
                f"trace_attention.py: hopper.py changed; anchor found {src.count(old)} times "
                f"(want {count}): {old.strip()[:80]!r}"
            )
        src = src.replace(old, new)
    return src


def near_mask(nb: int, k: int) -> torch.Tensor:
    """The diagonal plus the k nearest blocks to its left, every row of every head."""
    i = torch.arange(nb, device="cuda")
    d = i[:, None] - i[None, :]
    return ((d >= 0) & (d <= k)).to(torch.int8).expand(1, HQ, nb, nb).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="16", help="thousands of tokens (x1024)")
    ap.add_argument("--baseline", type=Path, help="another hopper.py to time beside this one")
    ap.add_argument("--out", type=Path, default=Path("bench-out/trace_attention.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        raise SystemExit("trace_attention.py needs an H100/H200 (the Gluon kernel is sm_90 only)")
    tmp = tempfile.mkdtemp(prefix="qvl_trace_")
    src = HOPPER.read_text()
    kern = load_copy(src, "hopper_copy", tmp)
    traced = load_copy(traced_source(src), "hopper_traced", tmp)
    base = load_copy(args.baseline.read_text(), "hopper_baseline", tmp) if args.baseline else None
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    rows, fits = [], []
    for Lk in map(int, args.lengths.split(",")):
        L = Lk * 1024
        nb = math.ceil(L / 128)
        n_items = HQ * nb
        P = min(n_items, n_sm)
        q, k, v = video_inputs(1, HQ, HKV, L, D, seed=L)
        pooled = (*mean_pool(k), *mean_pool(v))
        scale = D**-0.5
        masks = {f"diag+{kk}": near_mask(nb, kk) for kk in (0, 1, 4, 8, 16, 32)}
        masks["binary d~0.1"] = fixed_levels(1, HQ, L, 0.1, False, seed=2)
        masks["pyramid d~0.1"] = fixed_levels(1, HQ, L, 0.1, True, seed=2)
        masks["all level 1"] = torch.ones(1, HQ, nb, nb, dtype=torch.int8, device="cuda").tril()
        for name, lev in masks.items():
            lists = build_block_lists(lev, True)
            lv = lev.long()
            # tiles of the row streams: level-r blocks packed r per tile (the edge counted in its level)
            tiles = sum(((lv == r).sum(-1) + (r - 1)).div(r, rounding_mode="floor").sum().item() for r in (1, 2, 4, 8))
            row = dict(L=L, mask=name, items=n_items, tiles=tiles)
            row["kernel ms"] = timed(lambda: hopper.pyramid_attention_hopper(q, k, v, pooled, lists, True, scale))
            row["Triton ms"] = timed(lambda: pyramid_attention_triton(q, k, v, lev, pooled=pooled, lists=lists))
            if base is not None:
                row["baseline ms"] = timed(lambda: base.pyramid_attention_hopper(q, k, v, pooled, lists, True, scale))
            ref = kern.pyramid_attention_hopper(q, k, v, pooled, lists, True, scale)
            traced.TR = torch.zeros(n_items, SLOTS, dtype=torch.int64, device="cuda")
            out = traced.pyramid_attention_hopper(q, k, v, pooled, lists, True, scale)  # compile + warm
            traced.TR.zero_()
            out = traced.pyramid_attention_hopper(q, k, v, pooled, lists, True, scale)
            torch.cuda.synchronize()
            row["traced copy max diff"] = (out.float() - ref.float()).abs().max().item()
            tr = traced.TR.cpu().double()
            for wg in (0, 1):
                c = tr[:, 6 * wg : 6 * wg + 6]
                for i, ph in enumerate(PHASES):
                    row[f"WG{wg} {ph}"] = (c[:, i + 1] - c[:, i]).mean().item()
                row[f"WG{wg} gap to next item"] = (c[P:, 0] - c[:-P, 5]).mean().item()
                row[f"WG{wg} item"] = (c[P:, 0] - c[:-P, 0]).mean().item()
            row["loader tile 0 issued (vs item start)"] = (tr[:, 13] - tr[:, 0]).mean().item()
            row["loader Q issued (vs item start)"] = (tr[:, 14] - tr[:, 0]).mean().item()
            row["first item's Q wait"] = (tr[:P, 1] - tr[:P, 0]).mean().item()
            rows.append(row)
            print(
                f"L={L:6d} {name:14s} tiles/item {tiles / n_items:5.1f}  kernel {row['kernel ms']:.3f} ms"
                f"  Triton {row['Triton ms']:.3f}"
                + (f"  baseline {row['baseline ms']:.3f}" if base else "")
                + "  cycles/item: "
                + "  ".join(f"{ph} {row[f'WG0 {ph}']:.0f}" for ph in PHASES)
                + f"  gap {row['WG0 gap to next item']:.0f}  (diff {row['traced copy max diff']:.1e})",
                flush=True,
            )
        ks = [r for r in rows if r["L"] == L and r["mask"].startswith("diag+")]
        A = torch.tensor([[r["items"] / n_sm, r["tiles"] / n_sm] for r in ks], dtype=torch.float64)
        for col in ["kernel ms", "Triton ms"] + (["baseline ms"] if base else []):
            y = torch.tensor([[r[col] * 1000] for r in ks], dtype=torch.float64)  # us per SM
            a, b = torch.linalg.lstsq(A, y).solution.flatten().tolist()
            fits.append(dict(L=L, version=col.split()[0], us_per_item=a, us_per_tile=b))
            print(f"L={L:6d} fit {col.split()[0]:8s}: {a:.2f} us per work item + {b:.3f} us per tile (per SM)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows, "fits": fits}, indent=1))


if __name__ == "__main__":
    main()
