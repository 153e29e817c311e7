"""Experiment: set the GIL switch interval of every Python process started with this folder on
PYTHONPATH to QVL_SWITCH_INTERVAL seconds (CPython's default is 0.005).

Question: does the thread issuing a batch's GPU work wait for the GIL behind the prefetch
threads that decode frames and run the processor? A thread that gives up the GIL (a torch op,
a CUDA sync) waits up to one switch interval to take it back from a thread running Python, so a
shorter interval should shrink `bench_batch.py`'s GPU idle time between answers if it does.

    PYTHONPATH=benchmarks/experiments/gil_switch:$PWD QVL_SWITCH_INTERVAL=0.0005 \
        python benchmarks/bench_batch.py --videos 200 --loop 1
"""

import os
import sys

if os.environ.get("QVL_SWITCH_INTERVAL"):
    sys.setswitchinterval(float(os.environ["QVL_SWITCH_INTERVAL"]))
