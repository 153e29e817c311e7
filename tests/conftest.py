"""Shared test set-up.

Triton kernels run on the CPU through the interpreter unless a CUDA device is present; the
variable has to be set before triton is first imported, so it is set here, at collection start.
"""

import atexit
import os
import shutil
import tempfile

import pytest


def _cuda_available() -> bool:
    # nvidia-smi is a cheap, import-free proxy; torch.cuda is checked again by the gpu marker.
    return shutil.which("nvidia-smi") is not None and os.environ.get("CUDA_VISIBLE_DEVICES") != ""


if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests never read or write the user's caches, and never reach for the Hub: one private qvl cache
# (frames, the tiny model) and one private Hugging Face home for the whole session.
_SESSION_HOME = tempfile.mkdtemp(prefix="qvl-tests-")
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)  # each test process its own
os.environ["QVL_CACHE_DIR"] = os.path.join(_SESSION_HOME, "qvl")
os.environ["HF_HOME"] = os.path.join(_SESSION_HOME, "hf")
os.environ.pop("QVL_MODEL", None)


@pytest.fixture(scope="session")
def tiny_model_dir():
    """The tiny model folder, built once per test session."""
    from qvl.tiny import tiny_model_dir

    return tiny_model_dir()


@pytest.fixture
def tiny_by_default(tiny_model_dir, monkeypatch):
    """Commands run without --model answer with the tiny model (built once per session)."""
    monkeypatch.setenv("QVL_MODEL", "tiny")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
