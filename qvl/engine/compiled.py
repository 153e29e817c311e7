"""Whether this machine has compiled qvl's kernels yet: the fast path's, and PSA's.

The first process to run qvl's Triton kernels on a machine compiles each of them (Triton keeps
them in its cache, with PSA's autotuning choices), seconds that later processes do not pay; qvl
says so then. A mark beside Triton's own cache entries records that they were compiled for this
card, torch, Triton and qvl, so that clearing Triton's cache clears the mark too. `kernels` names
the set: "fast-path" (the warm-up compiles them) or "psa" (the first prompt that PSA runs on).
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def _mark(device_name: str, kernels: str) -> Path | None:
    """The mark's path, or None where Triton (or its cache folder) is not there to hold one."""
    try:
        import torch
        import triton
        from triton import knobs

        folder = Path(knobs.cache.dir)
    except (ImportError, AttributeError):
        return None
    from qvl import __version__

    key = f"{device_name}-torch{torch.__version__}-triton{triton.__version__}-qvl{__version__}"
    return folder / f"qvl-{kernels}-{re.sub(r'[^A-Za-z0-9.+-]', '_', key)}"


def compiled_before(device_name: str, kernels: str = "fast-path") -> bool:
    """Whether the kernels were compiled here before; True where that cannot be known or kept (no
    Triton, a cache folder qvl may not write), so that nothing claims a first run it cannot tell."""
    mark = _mark(device_name, kernels)
    if mark is None or mark.exists():
        return True
    folder = next((p for p in (mark.parent, *mark.parent.parents) if p.exists()), None)
    return folder is None or not folder.is_dir() or not os.access(folder, os.W_OK)


def remember_compiled(device_name: str, kernels: str = "fast-path") -> None:
    mark = _mark(device_name, kernels)
    if mark is None:
        return
    try:
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.touch()
    except OSError:
        pass
