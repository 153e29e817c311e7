"""Write a short sample video (moving test pattern, 8 s, 320x240, H.264) for the demo.

python examples/make_sample_video.py build/sample.mp4 [--seconds 8]
"""

import argparse
import subprocess
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    if args.output.exists():
        return
    from qvl.media.ffmpeg import ffmpeg_exe

    args.output.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            ffmpeg_exe(),
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size=320x240:rate=25:duration={args.seconds}",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-y",
            str(args.output),
        ],
        check=True,
    )


if __name__ == "__main__":
    main()
