"""Whether the weights' read and transformers' import slow each other down, and what Python's
thread switch interval does to both.

    PYTHONPATH=. python3 benchmarks/experiments/read_beside_import.py /tmp/r7b [--runs 1]

A cold `qvl` process reads the checkpoint on threads (`WeightReader`) while its loading thread
imports transformers' Qwen2.5-VL classes. Both need the GIL: the readers for a few Python steps per
chunk, the import for all of its work; a thread that wants the GIL back waits up to the switch
interval (5 ms by default) while another holds it. Each way runs in a fresh process with torch
and the CUDA context up first, the files in the page cache: the read alone, the import alone, and
both at once under several switch intervals. Printed: when the read and the import each ended.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time

WAYS = {  # name: (read, import, switch interval in ms or None for Python's)
    "read alone": (True, False, None),
    "import alone": (False, True, None),
    "both, 5 ms (default)": (True, True, None),
    "both, 1 ms": (True, True, 1.0),
    "both, 0.2 ms": (True, True, 0.2),
}


def child(folder: str, read: bool, imports: bool, interval_ms: float | None) -> None:
    from pathlib import Path

    import torch

    from qvl.engine.weights import WeightReader, checkpoint_files

    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    if interval_ms is not None:
        sys.setswitchinterval(interval_ms / 1000)
    started = time.perf_counter()
    waiter = None
    if read:
        reader = WeightReader(checkpoint_files(Path(folder)), "cuda")

        def wait_for_the_read() -> None:  # on its own thread, so the read's end is not the import's
            tensors = reader.tensors()
            torch.cuda.synchronize()
            size = sum(t.numel() * t.element_size() for t in tensors.values())
            seconds = time.perf_counter() - started
            print(f"read {seconds:.3f} {size / seconds / 1e9:.1f}", flush=True)

        waiter = threading.Thread(target=wait_for_the_read)
        waiter.start()
    if imports:
        from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: F401

        print(f"import {time.perf_counter() - started:.3f}", flush=True)
    if waiter is not None:
        waiter.join()


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        folder, read, imports, interval = sys.argv[2:6]
        child(folder, read == "1", imports == "1", None if interval == "-" else float(interval))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a saved checkpoint (benchmarks/save_random_model.py)")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    print(f"{'':<22} {'import ends s':>14} {'read ends s':>12} {'read GB/s':>10}")
    for name, (read, imports, interval) in WAYS.items():
        for _ in range(args.runs):
            flags = ["1" if read else "0", "1" if imports else "0", "-" if interval is None else str(interval)]
            out = subprocess.run(
                [sys.executable, __file__, "--child", args.folder, *flags], capture_output=True, text=True, check=True
            ).stdout
            found = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()}
            imported = found.get("import", ["-"])[0]
            read_s, rate = found.get("read", ["-", "-"])
            print(f"{name:<22} {imported:>14} {read_s:>12} {rate:>10}", flush=True)


if __name__ == "__main__":
    main()
