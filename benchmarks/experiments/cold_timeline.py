"""Where a cold CLI process's wall time goes, phase by phase, on one time line.

    PYTHONPATH=. python3 benchmarks/experiments/cold_timeline.py video clip.mp4 --frames 64 --json

Runs `python -m qvl <arguments>` in a child interpreter that this script enters first: the child
wraps qvl's functions to stamp when each phase starts and ends (and on which thread), runs the CLI
as the `qvl` command does (`qvl.start.main`), and stamps interpreter shutdown or the quick exit. The parent measures spawn to exit, so the
lines also show Python's start-up and the time between shutdown starting and the process ending.
Wrapping functions is what this experiment is for; the product has no such switch.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import time

SPAWN = "QVL_TIMELINE_SPAWN"
# Python's thread switch interval in the child, in ms (an experiment's setting; unset: Python's 5 ms).
SWITCH = "QVL_TIMELINE_SWITCH_MS"


def stamp(event: str) -> None:
    spawn = float(os.environ[SPAWN])
    print(f"[timeline] {time.time() - spawn:7.3f} s  {threading.current_thread().name:<16} {event}", file=sys.stderr)


def wrap(owner, name: str, label: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def stamped(*args, **kwargs):
        stamp(f"{label} starts")
        try:
            return original(*args, **kwargs)
        finally:
            stamp(f"{label} ends")

    setattr(owner, name, stamped)


def child(arguments: list[str]) -> None:
    import atexit

    stamp("python is up")
    from qvl import paths

    paths.keep_bytecode()  # as the `qvl` command does first (qvl.start)
    import qvl.cli
    import qvl.runner
    import qvl.start

    stamp("qvl.cli imported")
    wrap(qvl.runner.Runner, "load_in_background", "load_in_background")
    wrap(qvl.runner, "load_engine", "load_engine")
    wrap(qvl.runner.Runner, "engine", "Runner.engine (main waits for the model)")
    wrap(qvl.cli, "load_clip", "load_clip (frames)")
    import qvl.engine
    import qvl.engine.load
    import qvl.models

    wrap(qvl.engine, "resolve_device", "resolve_device (imports torch)")
    wrap(qvl.engine, "resolve_dtype", "resolve_dtype (asks the GPU for bf16)")
    wrap(qvl.models, "resolve_model", "resolve_model")
    wrap(qvl.engine.load, "_weight_reader", "_weight_reader (CUDA context, pinned buffers)")
    wrap(qvl.engine.load, "_pretrained_model", "_pretrained_model")
    wrap(qvl.engine.load, "_native_model", "_native_model (qvl's tree and processor)")
    if SWITCH in os.environ:
        sys.setswitchinterval(float(os.environ[SWITCH]) / 1000)

    original_load_engine = qvl.runner.load_engine

    def load_engine(settings, tokens=None, **options):
        import qvl.engine.fuse
        import qvl.engine.native
        import qvl.engine.weights

        wrap(qvl.engine.native, "build", "native.build")
        wrap(qvl.engine.fuse, "fuse_model", "fuse_model")

        wrap(qvl.engine.Engine, "__init__", "Engine.__init__")
        wrap(qvl.engine.Engine, "warm_up", "Engine.warm_up")
        wrap(qvl.engine.Engine, "generate", "Engine.generate")
        wrap(qvl.engine.load, "load_model", "load_model")
        wrap(qvl.engine.weights.WeightReader, "_read", "the weights' read")
        wrap(qvl.engine.weights.WeightReader, "tensors", "WeightReader.tensors (waits for the read)")
        return original_load_engine(settings, tokens, **options)

    qvl.runner.load_engine = load_engine
    atexit.register(stamp, "atexit (interpreter shutdown begins)")
    quick_exit = os._exit

    def stamped_exit(code):
        stamp("os._exit (no interpreter shutdown)")
        quick_exit(code)

    os._exit = stamped_exit
    sys.argv = ["qvl", *arguments]
    try:
        qvl.start.main()
    finally:
        stamp("qvl.start.main returned")


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return
    env = dict(os.environ, **{SPAWN: repr(time.time())})
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], env=env, stdout=subprocess.DEVNULL)
    print(f"[timeline] {time.perf_counter() - started:7.3f} s  {'parent':<16} the child has exited", file=sys.stderr)


if __name__ == "__main__":
    main()
