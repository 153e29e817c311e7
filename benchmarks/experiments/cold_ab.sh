#!/usr/bin/env bash
# Cold `qvl video` processes of several set-ups, alternated round by round so that a host's drift
# falls on every set-up alike.
#
#   bash benchmarks/experiments/cold_ab.sh ROUNDS NAME=PYTHONPATH [NAME=PYTHONPATH ...]
#
# Each set-up is an absolute PYTHONPATH (a checkout of another commit, a folder holding another
# transformers release installed with --target, or both joined with ':'). Each runs once untimed
# first: its bytecode (kept in qvl's cache where the host forbids writing it), the page cache. The
# processes run in /tmp, so that `python -m` does not put this checkout ahead of the set-up's path.
# Uses the clip and the saved random 7B that benchmarks/gpu_check.sh's cold part makes.
set -u
cd /tmp
rounds=$1
shift
PY=${PYTHON:-python3}
cmd="video /tmp/clip448.mp4 --frames 64 --max-pixels 200704 --max-tokens 128 --model /tmp/r7b --json --stats"
for setup in "$@"; do
    name=${setup%%=*}
    path=${setup#*=}
    PYTHONPATH=$path $PY -m qvl $cmd >/dev/null 2>&1
    echo "$name: $(PYTHONPATH=$path $PY -c 'import transformers; print("transformers", transformers.__version__)' 2>&1 | tail -1)"
done
for round in $(seq "$rounds"); do
    for setup in "$@"; do
        name=${setup%%=*}
        path=${setup#*=}
        err=$(mktemp)
        s=$(date +%s%N)
        PYTHONPATH=$path $PY -m qvl $cmd 2>"$err" >/dev/null
        echo "round $round $name: $((($(date +%s%N) - s) / 1000000)) ms; $(grep stats "$err")"
        rm -f "$err"
    done
done
