"""Prefill of a full-size Qwen2.5-VL (random weights) on the GPU: SDPA against PSA through qvl.psa.

    PYTHONPATH=. python3 benchmarks/bench_engine_psa.py [--model 7b] [--frames 64,256] [--out bench-out/engine_psa.json]

The model is built from its published shape with random weights (speed does not depend on the
weights' values) and loaded with qvl's PSA attention implementation for the language model; the
same model runs SDPA when no PSA request is active, so both are timed on one loaded model in one
run. Inputs are synthetic frames of 448x448 (256 LLM tokens per frame pair) with a short text
prompt after them, fed as model inputs directly (no tokenizer or processor is needed).
Reports the median prefill (vision tower + language model) time, PSA's density, and the
language-model share that PSA can touch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

SHAPES = {  # published Qwen2.5-VL Instruct shapes (text side; the vision tower is the same for all)
    "3b": dict(
        hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2
    ),
    "7b": dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4
    ),
}
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = 151652, 151653, 151655, 151656
SIDE = 448  # pixels: 16 x 16 LLM tokens per frame pair
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only for --smoke
TEXT_TOKENS = 24


def build_model(name: str, smoke: bool = False):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from qvl.psa import attn_implementation

    shape = (
        dict(hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
        if smoke
        else SHAPES[name]
    )
    text = dict(
        shape,
        vocab_size=152064,
        max_position_embeddings=128000,
        rope_theta=1e6,
        rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        rms_norm_eps=1e-6,
    )
    vision = dict(
        depth=2 if smoke else 32,
        hidden_size=64 if smoke else 1280,
        intermediate_size=128 if smoke else 3420,
        num_heads=4 if smoke else 16,
        out_hidden_size=text["hidden_size"],
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1] if smoke else [7, 15, 23, 31],
        hidden_act="silu",
        in_channels=3,
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=IMAGE_PAD,
        video_token_id=VIDEO_PAD,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
    )
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=torch.bfloat16, attn_implementation=attn_implementation()
        )
    return model.eval()


def make_inputs(frames: int, fps: float = 2.0) -> dict:
    grid_t, grid_hw = frames // 2, SIDE // 14
    video_tokens = grid_t * (grid_hw // 2) ** 2
    g = torch.Generator(device=DEVICE).manual_seed(frames)
    ids = [151644, 872, 198, VISION_START] + [VIDEO_PAD] * video_tokens + [VISION_END]
    ids += list(torch.randint(100, 150000, (TEXT_TOKENS,), generator=g, device=DEVICE).tolist()) + [151645]
    input_ids = torch.tensor([ids], device=DEVICE)
    patches = grid_t * grid_hw * grid_hw
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values_videos": torch.randn(patches, 3 * 2 * 14 * 14, generator=g, device=DEVICE).to(torch.bfloat16),
        "video_grid_thw": torch.tensor([[grid_t, grid_hw, grid_hw]], device=DEVICE),
        "second_per_grid_ts": torch.tensor([2.0 / fps], device=DEVICE),
    }


def prefill_ms(model, inputs, scope, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        _sync()
        started = time.perf_counter()
        with torch.inference_mode(), scope():
            model(**inputs, logits_to_keep=1)
        _sync()
        times.append((time.perf_counter() - started) * 1000)
    return times


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    import contextlib

    from qvl.psa import AttentionConfig, PSAStats, psa_request

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="7b", choices=sorted(SHAPES))
    parser.add_argument("--frames", default="64,256")
    parser.add_argument("--presets", default="fast,balanced,default")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-out/engine_psa.json"))
    parser.add_argument("--smoke", action="store_true", help="a toy shape, to check the script (CPU is fine)")
    args = parser.parse_args()

    model = build_model(args.model, args.smoke)
    rows = []
    for frames in map(int, args.frames.split(",")):
        inputs = make_inputs(frames)
        tokens = int(inputs["input_ids"].shape[1])
        text_length = TEXT_TOKENS + 2
        prefill_ms(model, inputs, contextlib.nullcontext, 1)  # warm-up
        sdpa = statistics.median(prefill_ms(model, inputs, contextlib.nullcontext, args.repeat))
        rows.append(dict(model=args.model, frames=frames, tokens=tokens, method="sdpa", ms=sdpa, density=1.0))
        print(rows[-1], flush=True)
        for preset in args.presets.split(","):
            config = AttentionConfig.preset(preset, **({"block": 16, "min_tokens": 64} if args.smoke else {}))
            stats = PSAStats()
            scope = lambda: psa_request(config, text_length, stats)  # noqa: E731
            prefill_ms(model, inputs, scope, 1)  # warm-up: autotuning at this length
            stats.layers.clear()
            ms = statistics.median(prefill_ms(model, inputs, scope, args.repeat))
            summary = stats.summary()
            rows.append(
                dict(
                    model=args.model,
                    frames=frames,
                    tokens=tokens,
                    method=f"psa {preset}",
                    ms=ms,
                    density=summary["density"] if summary else None,
                    speedup=sdpa / ms,
                )
            )
            print(rows[-1], flush=True)
        del inputs
        if DEVICE == "cuda":
            torch.cuda.empty_cache()

    print(f"{'model':<5} {'frames':>6} {'tokens':>7} {'method':<14} {'prefill ms':>10} {'density':>8} {'speed-up':>8}")
    for r in rows:
        sp = f"{r['speedup']:.2f}x" if "speedup" in r else ""
        dens = f"{r['density']:.3f}" if r["density"] is not None else "-"
        print(f"{r['model']:<5} {r['frames']:>6} {r['tokens']:>7} {r['method']:<14} {r['ms']:>10.1f} {dens:>8} {sp:>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    meta = dict(
        date=time.strftime("%Y-%m-%d"),
        card=card,
        torch=torch.__version__,
        transformers=__import__("transformers").__version__,
        triton=__import__("triton").__version__,
    )
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
