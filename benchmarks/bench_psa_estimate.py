"""PSA's estimation stage on its own: importance, similarity cap and both level-mask versions,
against cuDNN dense attention timed in the same run (7B attention shape, bf16, causal).

    PYTHONPATH=. python3 benchmarks/bench_psa_estimate.py [--lengths 32,64] [--out bench-out/estimate.json]

Answers three questions: which level_mask implementation should be the CUDA default (Triton or
vectorized torch), what share of dense attention the whole estimate costs (target <= 8%), and what
the fp8 importance (`block_importance(..., fp8=True)`; PSA's default on Hopper from 32K tokens)
saves over the bf16 one and how often its levels agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_psa import timed, video_inputs  # noqa: E402  (same timing and inputs as the main benchmark)

from qvl_kernels import PSAConfig, block_importance, level_mask_torch, level_mask_triton, similarity_cap  # noqa: E402

HQ, HKV, D, BLOCK = 28, 4, 128, 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="32,64", help="thousands of tokens (x1024)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/estimate.json"))
    args = parser.parse_args()
    rows = []
    for preset in ("default", "fast"):
        cfg = PSAConfig.preset(preset)
        for lk in map(int, args.lengths.split(",")):
            L = lk * 1024
            q, k, v = video_inputs(1, HQ, HKV, L, D, seed=L)
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
                dense = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
            importance = timed(lambda: block_importance(q, k, block=BLOCK, stride=cfg.stride))
            scores = block_importance(q, k, block=BLOCK, stride=cfg.stride)
            cap_ms = timed(lambda: similarity_cap(k, block=BLOCK, thresholds=cfg.thresholds))
            cap = similarity_cap(k, block=BLOCK, thresholds=cfg.thresholds)
            kw = dict(mode=cfg.mode, ratios=cfg.ratios, text_blocks=1)
            lev = level_mask_triton(scores, cap, **kw)
            same = bool(torch.equal(lev, level_mask_torch(scores, cap, **kw)))
            mask_triton = timed(lambda: level_mask_triton(scores, cap, **kw))
            mask_torch = timed(lambda: level_mask_torch(scores, cap, **kw))
            total = importance + cap_ms + min(mask_triton, mask_torch)
            # fp8 estimate (q quantized per strided row, k per head, inside the call): time and level agreement.
            imp8 = timed(lambda: block_importance(q, k, block=BLOCK, stride=cfg.stride, fp8=True))
            lev8 = level_mask_triton(block_importance(q, k, block=BLOCK, stride=cfg.stride, fp8=True), cap, **kw)
            vis = torch.ones(lev.shape[-1], lev.shape[-1], dtype=torch.bool, device=lev.device).tril()
            agree = (lev == lev8)[..., vis].float().mean().item()
            total8 = imp8 + cap_ms + min(mask_triton, mask_torch)
            rows.append(dict(preset=preset, L=L, dense_ms=dense, importance_ms=importance, cap_ms=cap_ms,
                             mask_triton_ms=mask_triton, mask_torch_ms=mask_torch, same_levels=same,
                             estimate_share=total / dense, importance_fp8_ms=imp8, fp8_level_agreement=agree,
                             estimate_share_fp8=total8 / dense))
            del q, k, v, scores, cap
            torch.cuda.empty_cache()
    print(f"{'preset':<8} {'L':>7} {'cuDNN':>8} {'import.':>8} {'cap':>6} {'mask tri':>9} {'mask torch':>10} {'same':>5} "
          f"{'share':>6} {'imp fp8':>8} {'agree':>7} {'share fp8':>9}")
    for r in rows:
        print(f"{r['preset']:<8} {r['L']:>7} {r['dense_ms']:>8.2f} {r['importance_ms']:>8.2f} {r['cap_ms']:>6.3f} "
              f"{r['mask_triton_ms']:>9.3f} {r['mask_torch_ms']:>10.3f} {str(r['same_levels']):>5} {r['estimate_share']:>6.1%} "
              f"{r['importance_fp8_ms']:>8.2f} {r['fp8_level_agreement']:>7.2%} {r['estimate_share_fp8']:>9.1%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(date=time.strftime("%Y-%m-%d"), card=torch.cuda.get_device_name(), torch=torch.__version__,
                triton=__import__("triton").__version__)
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
