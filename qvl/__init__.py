"""qvl: run Qwen2.5-VL on images and long videos from one machine."""

__version__ = "0.1.0"

__all__ = ["Engine", "QwenVLInference", "Request", "Result", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import qvl` (and `qvl --help`) does not import torch and transformers.
    if name == "QwenVLInference":
        from qvl.api import QwenVLInference

        return QwenVLInference
    if name in ("Engine", "Request", "Result"):
        from qvl import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'qvl' has no attribute {name!r}")
