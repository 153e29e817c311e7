"""Write a short sample video (moving test pattern, 8 s, 320x240, H.264) for the demo.

python examples/make_sample_video.py build/sample.mp4 [--seconds 8]
"""

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    if args.output.exists():
        return
    from qvl.media.ffmpeg import run_ffmpeg

    args.output.parent.mkdir(parents=True, exist_ok=True)
    source = f"testsrc2=size=320x240:rate=25:duration={args.seconds}"
    run_ffmpeg("-f", "lavfi", "-i", source, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(args.output))


if __name__ == "__main__":
    main()
