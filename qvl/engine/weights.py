"""A checkpoint's safetensors read onto the GPU on a thread while transformers is imported.

A fresh process spends seconds importing transformers' model classes (Python work that holds the
GIL) and seconds more copying the weights to the GPU (file reads and host-to-device copies, which
mostly do not). Reading the files on a thread from the start overlaps the two; transformers then
builds the model from the tensors already in place (`from_pretrained(None, state_dict=...)` with
the same key conversions, the parameters sharing the tensors' memory).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path


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

    def __init__(self, files: list[Path], device: str):
        self._files, self._device = files, device
        self._tensors: dict | None = None
        self._thread = threading.Thread(target=self._read, name="qvl-read-weights", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            from safetensors.torch import load_file

            tensors: dict = {}
            for file in self._files:
                tensors.update(load_file(file, device=self._device))
            self._tensors = tensors
        except Exception:  # noqa: BLE001 - the usual load reports it, with its own message
            self._tensors = None

    def tensors(self) -> dict | None:
        self._thread.join()
        tensors, self._tensors = self._tensors, None
        return tensors
