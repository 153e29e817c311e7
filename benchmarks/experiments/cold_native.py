"""How long a cold process takes to answer a video without importing transformers.

    PYTHONPATH=. python3 benchmarks/experiments/cold_native.py MODEL_FOLDER CLIP [--frames 64]
        [--max-pixels 200704] [--max-tokens 128] [--rounds 3]

Each round runs, in alternation, two fresh processes over the same saved checkpoint and clip:
`qvl video --json` as users run it, and a child of this script that does what a cold path
without transformers would: the weights read onto the GPU (`engine.weights.WeightReader`) while
the frames decode, qvl's own module tree (`engine.native`) built on them, the inputs made by
`engine.native_inputs`, a warm-up of two tokens, then the request on the fast path (CUDA graphs).
The child prints its time line and checks that transformers was never imported. The parent
prints each process's wall time. This is the measurement that decides whether the engine takes
this path; the engine does not take it yet.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()


def stamp(what: str) -> None:
    print(f"[native] {time.perf_counter() - STARTED:7.3f} s  {what}", file=sys.stderr, flush=True)


def child(folder: Path, clip: str, frames: int, max_pixels: int, max_tokens: int, device: str) -> None:
    stamp("python is up")
    import threading

    import torch

    stamp("torch imported")
    from qvl.engine import Engine, Request, VideoFrames, native
    from qvl.engine.fuse import fuse_model
    from qvl.engine.generate import FastGenerator, TextStream, eos_ids
    from qvl.engine.native_inputs import ChatTemplate, Tokenizer, VideoPixels, video_inputs
    from qvl.engine.weights import WeightReader, checkpoint_files
    from qvl.media.video import VideoOptions, load_video

    cuda = device == "cuda"
    if cuda:
        torch.cuda.init()
    reader = WeightReader(checkpoint_files(folder), device)
    stamp("the weights' read started")
    decoded: dict = {}
    decoding = threading.Thread(
        target=lambda: decoded.update(clip=load_video(clip, VideoOptions(frames=frames, max_pixels=max_pixels)))
    )
    decoding.start()
    tokenizer, template, pixels = Tokenizer(folder), ChatTemplate(folder), VideoPixels(folder)
    stamp("tokenizer, template and pixel settings read")
    tensors = reader.tensors()
    stamp("the weights are on the GPU")
    model = native.build(folder, tensors, torch.bfloat16 if cuda else torch.float32)
    fuse_model(model)  # as the engine does at load
    generator = FastGenerator(model, use_graph=cuda)
    eos = eos_ids(model, tokenizer)
    stamp("the model is built")

    def answer(video: VideoFrames, tokens: int):
        request = Request("What happens in this video?", video=video, max_new_tokens=tokens)
        text = template.render(Engine.chat_messages(request))
        frames_on_device = torch.from_numpy(video.frames).to(device)
        inputs = video_inputs(tokenizer, pixels, text, frames_on_device, video.sampled_fps, model.config.video_token_id)
        with torch.inference_mode():
            return generator.generate(inputs, request, TextStream(tokenizer, None), eos)

    side = 2 * model.config.vision_config.patch_size * model.config.vision_config.spatial_merge_size
    answer(VideoFrames(torch.zeros(2, side, side, 3, dtype=torch.uint8).numpy(), 2.0), 2)
    if cuda:
        torch.cuda.synchronize()
    stamp("warm-up done")
    decoding.join()
    clip_frames = decoded["clip"]
    stamp(f"the frames are decoded ({clip_frames.frames.shape[0]} frames)")
    done = answer(VideoFrames(clip_frames.frames, clip_frames.sampled_fps), max_tokens)
    if cuda:
        torch.cuda.synchronize()
    stamp(f"answered: {len(done.tokens)} tokens")
    leaked = sorted({m.split(".")[0] for m in sys.modules if m.startswith(("transformers", "sklearn"))})
    print(json.dumps({"tokens": len(done.tokens), "imported": leaked}), flush=True)


def run(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    return time.perf_counter() - started, (done.stdout + done.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("clip")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--max-pixels", type=int, default=200_704)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run with the tiny model (float32)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.model, args.clip, args.frames, args.max_pixels, args.max_tokens, args.device)
        return
    sizes = ["--frames", str(args.frames), "--max-pixels", str(args.max_pixels), "--max-tokens", str(args.max_tokens)]
    native = [sys.executable, __file__, str(args.model), args.clip, *sizes, "--device", args.device, "--child"]
    qvl = [sys.executable, "-m", "qvl", "video", args.clip, *sizes, "--model", str(args.model), "--device", args.device]
    qvl += ["--json", "--no-cache"]
    run(native), run(qvl)  # untimed: bytecode, the page cache, Triton's cache
    for round_ in range(1, args.rounds + 1):
        for name, command in (("qvl video", qvl), ("without transformers", native)):
            seconds, output = run(command)
            print(f"round {round_} {name}: {seconds:.2f} s", flush=True)
            if name != "qvl video":
                print(output.strip(), flush=True)


if __name__ == "__main__":
    main()
