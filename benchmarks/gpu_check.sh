#!/usr/bin/env bash
# One GPU round: the gpu tests, the compiled kernel tests, and the benchmarks the targets name, each
# part under its own time limit, results under $OUT (default bench-out/gpu-check).
#
#   bash benchmarks/gpu_check.sh [PART...]     parts: tests kernels e2e cold psa_cold batch (default:
#                                              all); media only makes the cold parts' clips and saved 7B
#
# WHEELS=DIR installs the wheels in DIR first (--no-index --no-deps: a GPU host without a registry);
# LIMIT_<PART>=seconds overrides a part's limit. Cold processes run as the host is: where it keeps
# Python from writing bytecode, qvl keeps it in its cache (the first, untimed run writes it); the
# saved random 7B goes to /tmp/r7b.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
PARTS=${*:-tests kernels e2e cold psa_cold batch}
for name in $PARTS; do
    case $name in
        tests | kernels | e2e | cold | psa_cold | batch | media) ;;
        *) echo "unknown part: $name (tests kernels e2e cold psa_cold batch media)" >&2; exit 2 ;;
    esac
done
T0=$(date +%s)
part() { echo "=== [$(($(date +%s) - T0)) s] $*"; }

if [ -n "${WHEELS:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --break-system-packages --root-user-action=ignore "$WHEELS"/*.whl 2>&1 | tail -3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import sys, torch, triton, transformers; print('Python', sys.version.split()[0], 'torch', torch.__version__, 'Triton', triton.__version__, 'transformers', transformers.__version__)"

write_clip() {  # PATH FRAMES: a 448x448 clip at 8 fps written with PyAV (the GPU hosts have no ffmpeg)
    [ -f "$1" ] || $PY -c "
import sys, av, numpy as np
c = av.open(sys.argv[1], 'w'); s = c.add_stream('mpeg4', rate=8); s.width = s.height = 448; s.pix_fmt = 'yuv420p'
for i in range(int(sys.argv[2])):
    img = np.zeros((448, 448, 3), np.uint8); img[:, :, 0] = (i * 2) % 256; img[(i * 4) % 448:, :, 1] = 200
    for p in s.encode(av.VideoFrame.from_ndarray(img, format='rgb24')): c.mux(p)
for p in s.encode(): c.mux(p)
c.close()" "$1" "$2"
}
clip() { write_clip /tmp/clip448.mp4 96; }
# 520 frames: --frames 512 is 65,536 video tokens, where PSA's presets apply
long_clip() { write_clip /tmp/clip512.mp4 520; }
saved_7b() { [ -f /tmp/r7b/config.json ] || $PY benchmarks/save_random_model.py random:7b /tmp/r7b 2>&1 | tail -1; }

run_tests() {
    part "gpu tests"
    timeout "${LIMIT_TESTS:-180}" $PY -m pytest -q -m gpu tests --ignore=tests/kernels -rfs -p no:cacheprovider 2>&1 | tail -20
}
run_kernels() {  # every case compiles its kernels: parallel workers, failures named as they happen
    part "kernel tests, compiled"
    timeout "${LIMIT_KERNELS:-360}" $PY -m pytest -n "${KERNEL_WORKERS:-14}" -v -rf tests/kernels -p no:cacheprovider \
        >"$OUT/kernels.log" 2>&1
    grep -E "FAILED|ERROR" "$OUT/kernels.log" | head -20
    tail -3 "$OUT/kernels.log"
}
run_e2e() {
    part "bench_e2e"
    timeout "${LIMIT_E2E:-400}" $PY benchmarks/bench_e2e.py --frames 64,256 --max-tokens 128 --repeat 1 \
        --out "$OUT/e2e.json" 2>&1 | tail -25
}
run_cold() {
    clip && saved_7b
    part "cold processes (PYTHONDONTWRITEBYTECODE=${PYTHONDONTWRITEBYTECODE:-unset})"
    local cmd="video /tmp/clip448.mp4 --frames 64 --max-pixels 200704 --max-tokens 128 --model /tmp/r7b --json --stats"
    $PY -m qvl $cmd >/dev/null 2>&1 # the bytecode (where qvl keeps it), the page cache, Triton's cache
    for i in 1 2 3; do
        s=$(date +%s%N)
        $PY -m qvl $cmd 2>"$OUT/cold.err" >/dev/null
        echo "cold qvl video: $((($(date +%s%N) - s) / 1000000)) ms; $(grep stats "$OUT/cold.err")"
    done
    $PY benchmarks/experiments/cold_timeline.py $cmd 2>&1 | grep -E "timeline|stats"
}
run_media() { clip && saved_7b && long_clip; }
run_psa_cold() {  # the target: a cold process's first request with --psa never slower than dense
    long_clip && saved_7b
    part "cold processes at 512 frames, dense and --psa alternated (after one untimed --psa run)"
    local cmd="video /tmp/clip512.mp4 --frames 512 --max-pixels 200704 --max-tokens 64 --model /tmp/r7b --json --no-cache"
    timeout "${LIMIT_PSA_COLD:-150}" $PY -m qvl $cmd --psa >/dev/null 2>"$OUT/psa-first.err"
    grep -i "compil" "$OUT/psa-first.err" | head -2
    for round in 1 2; do
        for way in dense psa; do
            local extra=""
            [ $way = psa ] && extra=--psa
            s=$(date +%s%N)
            timeout 120 $PY -m qvl $cmd $extra >"$OUT/psa-cold-$way$round.json" 2>/dev/null
            echo "round $round $way: $((($(date +%s%N) - s) / 1000000)) ms; $($PY -c "import json, sys
d = json.load(open(sys.argv[1])); print('timings', d['timings'], 'psa', d.get('psa'))" "$OUT/psa-cold-$way$round.json" 2>&1 | cut -c1-400)"
        done
    done
}
run_batch() {
    part "qvl batch: one row at a time; 4 rows (the default); 4 rows with 8 CPU workers"
    for way in "--batch-size 1" "" "--workers 8"; do
        timeout "${LIMIT_BATCH:-200}" $PY benchmarks/bench_batch.py --loop 2 $way \
            --out "$OUT/batch${way// /}.json" 2>&1 | tail -14
    done
}

for name in $PARTS; do "run_$name"; done
part done
