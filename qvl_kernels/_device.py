"""Device facts the launchers ask on every call, looked up once per device, and the choice
between an op's kernel and its plain-PyTorch reference (`by_device`).

`torch.cuda.get_device_capability` goes through Python argument handling and a properties
object each time (a few microseconds); one psa_attention call asked it four times, on the host
path that an isolated call's GPU waits for.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import torch


@functools.lru_cache(maxsize=None)
def _properties(index: int):
    return torch.cuda.get_device_properties(index)


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device."""
    p = _properties(_index(device))
    return p.major, p.minor


def interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def by_device(reference: Callable, kernel: Callable) -> Callable:
    """An op as users call it: `kernel` (Triton) where its first tensor is on a CUDA device or the
    interpreter runs, `reference` (plain PyTorch, the same arguments) for CPU tensors; named and
    documented as `kernel`."""

    @functools.wraps(kernel)
    def op(x: torch.Tensor, *args, **kwargs):
        return (kernel if x.is_cuda or interpreting() else reference)(x, *args, **kwargs)

    return op


def sm_count(device: torch.device) -> int:
    """Number of streaming multiprocessors of a CUDA device."""
    return _properties(_index(device)).multi_processor_count


def fp32_on_gpu(x: torch.Tensor) -> bool:
    """Whether an fp32 CUDA tensor asks for an attention kernel that its blocked PyTorch path
    serves instead: Triton takes minutes to compile the attention kernels' fp32 tiles (IEEE
    products, no tensor cores) on a GPU, longer than the blocked path takes to run a 32K prompt."""
    return x.is_cuda and x.dtype == torch.float32
