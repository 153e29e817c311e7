"""qvl: run Qwen2.5-VL on images and long videos from one machine."""

__version__ = "0.1.0"
