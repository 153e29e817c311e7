"""The video processor's per-pixel work against the same work done from uint8 frames by hand:
is `Engine.prepare` (transformers' processor, its pixel work on the GPU) worth replacing?

    PYTHONPATH=. python3 benchmarks/experiments/variants_processor.py [--model random:7b] [--frames 64,256]

For each frame count, on the engine's device, median of 5 after a warm-up:
- `prepare`: `Engine.prepare` as requests run it (chat template, tokenizer, video processor);
- `tokenizer`: the prompt with its video tokens expanded, tokenized alone;
- `by hand`: the frames' uint8 bytes copied to the device (pinned, on a CUDA device), then
  rescale and normalise in one fused multiply-add and Qwen2-VL's patch order, in torch;
and whether `by hand` gives the processor's `pixel_values_videos` (largest absolute difference).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import sync, synthetic_video  # noqa: E402


def by_hand(frames, processor, device) -> torch.Tensor:
    """[T * h * w / patch^2, C * temporal * patch^2] fp32 patches, in Qwen2-VL's order."""
    vp = processor.video_processor
    patch, temporal, merge = vp.patch_size, vp.temporal_patch_size, vp.merge_size
    x = torch.from_numpy(frames)
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2)  # [T, C, H, W] uint8
    mean = torch.tensor(vp.image_mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(vp.image_std, device=device).view(1, -1, 1, 1)
    x = (x.float() * vp.rescale_factor - mean) / std
    t, c, h, w = x.shape
    gt, gh, gw = t // temporal, h // patch, w // patch
    x = x.reshape(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    return x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gt * gh * gw, c * temporal * patch * patch)


def median_s(fn, repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        sync()
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:7b")
    parser.add_argument("--frames", default="64,256")
    args = parser.parse_args()

    from qvl.engine import Engine, Request

    engine = Engine(args.model, native=False)  # times transformers' processor
    device = engine.model.device
    tokenizer = engine.processor.tokenizer
    print(f"{'frames':>6} {'prepare s':>10} {'tokenizer s':>12} {'by hand s':>10} {'max |diff|':>11}")
    for count in (int(n) for n in args.frames.split(",")):
        video = synthetic_video(count)
        request = Request("Describe this video.", video=video)
        inputs = engine.prepare(request)
        tokens = int(inputs["input_ids"].shape[1])
        expanded = tokenizer.decode(inputs["input_ids"][0])
        ours = by_hand(video.frames, engine.processor, device)
        diff = float((ours - inputs["pixel_values_videos"].float()).abs().max())
        prepare_s = median_s(lambda: engine.prepare(request))
        tokenizer_s = median_s(lambda: tokenizer(expanded, return_tensors="pt"))
        hand_s = median_s(lambda: by_hand(video.frames, engine.processor, device))
        print(f"{count:>6} {prepare_s:>10.4f} {tokenizer_s:>12.4f} {hand_s:>10.4f} {diff:>11.2e}  ({tokens:,} tokens)")


if __name__ == "__main__":
    main()
