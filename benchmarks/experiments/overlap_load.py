"""Whether reading the weights to the GPU while transformers imports shortens a fresh process's load.

    PYTHONPATH=. python3 benchmarks/experiments/overlap_load.py MODEL_DIR [--mode serial|overlap]

Without --mode it runs each mode twice, each in a fresh interpreter, and prints the times. serial:
import torch, transformers' Qwen2.5-VL class, then `from_pretrained(device_map="cuda")` (what
qvl does). overlap: a thread imports torch and loads the safetensors files straight to the GPU
while the main thread imports transformers; then `from_pretrained(None, config=...,
state_dict=...)` builds the model from the tensors already there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time


def serial(path: str) -> dict:
    started = time.perf_counter()
    import torch

    torch.cuda.init()
    cuda = time.perf_counter()
    from transformers import Qwen2_5_VLForConditionalGeneration

    imported = time.perf_counter()
    Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda")
    torch.cuda.synchronize()
    done = time.perf_counter()
    return {
        "torch+cuda": cuda - started,
        "transformers": imported - cuda,
        "weights": done - imported,
        "total": done - started,
    }


def overlap(path: str) -> dict:
    started = time.perf_counter()
    tensors: dict = {}
    marks: dict = {}

    def read() -> None:
        import glob

        import torch
        from safetensors.torch import load_file

        torch.cuda.init()
        marks["cuda"] = time.perf_counter() - started
        for file in sorted(glob.glob(f"{path}/*.safetensors")):
            tensors.update(load_file(file, device="cuda"))
        torch.cuda.synchronize()
        marks["read"] = time.perf_counter() - started

    reader = threading.Thread(target=read)
    reader.start()
    import torch  # noqa: F401
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    config = AutoConfig.from_pretrained(path)
    imported = time.perf_counter() - started
    reader.join()
    joined = time.perf_counter() - started
    Qwen2_5_VLForConditionalGeneration.from_pretrained(
        None, config=config, state_dict=tensors, dtype=torch.bfloat16, device_map="cuda"
    )
    torch.cuda.synchronize()
    done = time.perf_counter() - started
    return {"transformers imported": imported, "weights read": marks["read"], "joined": joined, "total": done}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--mode", choices=("serial", "overlap"))
    args = parser.parse_args()
    if args.mode:
        result = (serial if args.mode == "serial" else overlap)(args.path)
        print(args.mode, " ".join(f"{k} {v:.2f}s" for k, v in result.items()), flush=True)
        return
    for mode in ("serial", "overlap", "serial", "overlap"):
        subprocess.run([sys.executable, __file__, args.path, "--mode", mode], check=False)


if __name__ == "__main__":
    main()
