"""Shared test set-up.

Triton kernels run on the CPU through the interpreter unless a CUDA device is present; the
variable has to be set before triton is first imported, so it is set here, at collection start.
"""

import os
import shutil

import pytest


def _cuda_available() -> bool:
    # nvidia-smi is a cheap, import-free proxy; torch.cuda is checked again by the gpu marker.
    return shutil.which("nvidia-smi") is not None and os.environ.get("CUDA_VISIBLE_DEVICES") != ""


if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
