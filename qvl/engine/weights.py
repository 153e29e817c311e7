"""A checkpoint's safetensors read onto the GPU on a thread while transformers is imported.

A fresh process spends seconds importing transformers' model classes (Python work that holds the
GIL) and seconds more copying the weights to the GPU. Reading the files on a thread from the start
overlaps the two; transformers then builds the model from the tensors already in place
(`from_pretrained(None, state_dict=...)` with the same key conversions, the parameters sharing the
tensors' memory).

The read itself is a few large steps, not one Python call per tensor, so that the imports beside it
do not slow it down: each file's data is read in chunks (`os.preadv`, which lets go of the GIL)
into page-locked buffers by a few threads, each copying its chunks to the GPU on its own stream
while it reads the next. The safetensors format is an 8-byte header length, a JSON header of
{name: {dtype, shape, data_offsets}}, then the tensors' bytes.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import struct
import threading
from pathlib import Path

CHUNK_BYTES = 64 << 20  # large enough that each chunk costs a few Python steps, small enough to pin fast
LANES = 4  # threads per file, each reading its own chunks into its own two buffers

# safetensors' dtype names -> torch dtype attribute names
_DTYPES = {
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files `from_pretrained(path)` would read: the index's shards, or the one file."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = json.loads(index.read_text())["weight_map"].values()
        except (OSError, ValueError, KeyError, AttributeError):
            return []
        return [path / name for name in sorted(set(shards))]
    single = path / "model.safetensors"
    return [single] if single.is_file() else []


def stored_dtype(path: Path) -> str | None:
    """The dtype config.json says the weights are stored in ("bfloat16"), or None."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    dtype = config.get("dtype") or config.get("torch_dtype")
    return dtype if isinstance(dtype, str) else None


class WeightReader:
    """Reads `files` onto `device` on a daemon thread from construction on.

    `tensors()` waits for it and returns {name: tensor}, or None where any read failed; the caller
    then loads the usual way, which reads the files again and says what is wrong with them.
    """

    def __init__(self, files: list[Path], device: str, *, chunk_bytes: int = CHUNK_BYTES, lanes: int = LANES):
        self._files, self._device = files, device
        self._chunk_bytes, self._lanes = chunk_bytes, lanes
        self._tensors: dict | None = None
        self._thread = threading.Thread(target=self._read, name="qvl-read-weights", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            tensors: dict = {}
            for file in self._files:
                tensors.update(read_safetensors(file, self._device, self._chunk_bytes, self._lanes))
            self._tensors = tensors
        except Exception:  # noqa: BLE001 - the usual load reports it, with its own message
            self._tensors = None
        finally:
            _release_page_locked_buffers()

    def tensors(self) -> dict | None:
        self._thread.join()
        tensors, self._tensors = self._tensors, None
        return tensors


def read_safetensors(path: Path, device: str, chunk_bytes: int = CHUNK_BYTES, lanes: int = LANES) -> dict:
    """{name: tensor} of one safetensors file, each tensor allocated on `device` and filled from
    `chunk_bytes` chunks read by `lanes` threads. Raises ValueError for a file that is not one."""
    import torch

    with open(path, "rb") as fh:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        (header_bytes,) = struct.unpack("<Q", _read_at(fd, 8, 0))
        if header_bytes > size - 8:
            raise ValueError(f"{path}: the header runs past the file's end")
        header = json.loads(_read_at(fd, header_bytes, 8))
        base = 8 + header_bytes
        tensors, placed = {}, []  # placed: (file start, file end, the tensor's bytes), in file order
        for name, info in header.items():
            if name == "__metadata__":
                continue
            tensor = torch.empty(info["shape"], dtype=getattr(torch, _DTYPES[info["dtype"]]), device=device)
            start, end = (base + offset for offset in info["data_offsets"])
            if end - start != tensor.numel() * tensor.element_size() or end > size:
                raise ValueError(f"{path}: {name}'s bytes do not match its shape")
            tensors[name] = tensor
            if end > start:
                placed.append((start, end, tensor.view(-1).view(torch.uint8)))
        placed.sort(key=lambda p: p[0])
        for (_, previous_end, _), (start, _, _) in zip(placed, placed[1:]):
            if start < previous_end:
                raise ValueError(f"{path}: two tensors' bytes overlap")
        if placed and placed[0][0] < base:
            raise ValueError(f"{path}: a tensor's bytes start inside the header")
        chunks = [(at, min(at + chunk_bytes, size)) for at in range(base, size, chunk_bytes)]
        work = [chunks[lane::lanes] for lane in range(lanes)]
        failures: list[BaseException] = []

        def run(lane_chunks):
            try:
                _copy_chunks(fd, lane_chunks, placed, device, chunk_bytes, failures)
            except BaseException as exc:  # noqa: BLE001 - raised below, in the reading thread
                failures.append(exc)

        threads = [threading.Thread(target=run, args=(w,), name="qvl-read-lane", daemon=True) for w in work if w]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    return tensors


def _copy_chunks(fd: int, chunks, placed, device: str, chunk_bytes: int, failures: list) -> None:
    """Read each (start, end) chunk of the file into a buffer and copy the parts of `placed`
    tensors it holds; on a GPU through two page-locked buffers on one stream, so that reading one
    chunk overlaps copying the one before. Stops early once another lane has failed (`failures`)."""
    import torch

    cuda = torch.device(device).type == "cuda"
    stream = torch.cuda.Stream(device=device) if cuda else None
    if stream is not None:  # after the work that made the tensors (their memory may have been in use)
        stream.wait_stream(torch.cuda.current_stream(device))
    try:
        _copy_on(stream, fd, chunks, placed, chunk_bytes, failures)
    finally:  # no copy may still write into a tensor that a failed read's caller frees
        if stream is not None:
            stream.synchronize()


def _copy_on(stream, fd: int, chunks, placed, chunk_bytes: int, failures: list) -> None:
    import torch

    cuda = stream is not None
    buffers = [torch.empty(chunk_bytes, dtype=torch.uint8, pin_memory=cuda) for _ in range(2 if cuda else 1)]
    copied: list = [None] * len(buffers)  # the event after each buffer's last copies
    starts = [p[0] for p in placed]
    for i, (start, end) in enumerate(chunks):
        if failures:
            return
        slot = i % len(buffers)
        if copied[slot] is not None:
            copied[slot].synchronize()
        buffer = buffers[slot]
        _read_into(fd, memoryview(buffer.numpy())[: end - start], start)
        first = max(bisect.bisect_right(starts, start) - 1, 0)
        with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
            for tensor_start, tensor_end, target in placed[first:]:
                if tensor_start >= end:
                    break
                lo, hi = max(tensor_start, start), min(tensor_end, end)
                if lo < hi:
                    target[lo - tensor_start : hi - tensor_start].copy_(
                        buffer[lo - start : hi - start], non_blocking=cuda
                    )
            if cuda:
                copied[slot] = torch.cuda.Event(blocking=True)  # its waiter sleeps, leaving the core free
                copied[slot].record(stream)


def _release_page_locked_buffers() -> None:
    """Give back the read's page-locked buffers, which torch would otherwise keep cached for the
    process's life (half a gigabyte of RAM the system cannot page out)."""
    import torch

    empty_cache = getattr(torch._C, "_host_emptyCache", None)  # private, so not in every release
    if empty_cache is not None and torch.cuda.is_initialized():
        empty_cache()


def _read_at(fd: int, count: int, offset: int) -> bytes:
    data = os.pread(fd, count, offset)
    if len(data) != count:
        raise ValueError("the file ends early")
    return data


def _read_into(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        count = os.preadv(fd, [view], offset)
        if count <= 0:
            raise ValueError("the file ends early")
        view, offset = view[count:], offset + count
