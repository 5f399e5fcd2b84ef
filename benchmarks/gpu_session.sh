#!/usr/bin/env bash
# One GPU session: correctness tests, then a tile sweep or the benchmark suite. Results under $OUT (or ./out).
# Usage: bash benchmarks/gpu_session.sh STEP...   with STEP one of
#   tests                  tests/test_gpu_kernels.py (PYTEST_ARGS="-n 12 -p xdist" with pytest-xdist wheels carried)
#   sweep                  benchmarks/sweep_configs.py (SWEEP_DIMS, SWEEP_SEQLENS, SWEEP_ARGS)
#   bench                  benchmarks/bench_attention.py (BENCH_ARGS)
#   pytest:FILE            the gpu-marked tests of FILE, run files kept under /tmp/fa2_tmp_NAME
#   cmd:COMMAND            any command (EXTRA_TIMEOUT)
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
for step in "$@"; do
    case $step in
        tests) timeout "${TEST_TIMEOUT:-300}" python -m pytest tests/test_gpu_kernels.py -m gpu -v --maxfail=20 \
            ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "FAILED|passed|failed" ;;
        sweep) timeout "${SWEEP_TIMEOUT:-300}" python benchmarks/sweep_configs.py --head-dims "${SWEEP_DIMS:-64,128,256}" \
            --seqlens "${SWEEP_SEQLENS:-4096}" ${SWEEP_ARGS:-} --out "$OUT/sweep.json" 2>&1 | grep -v Warning | tee "$OUT/sweep.log" ;;
        bench) timeout "${BENCH_TIMEOUT:-400}" python benchmarks/bench_attention.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 \
            | tail -n 80 | tee "$OUT/bench.log" ;;
        pytest:*) name=$(basename "${step#pytest:}" .py)
            timeout "${EXTRA_TIMEOUT:-240}" python -m pytest "${step#pytest:}" -m gpu -v -rfs -s \
                --basetemp="/tmp/fa2_tmp_$name" 2>&1 | tee "$OUT/$name.log" | grep -E "PASSED|FAILED|SKIPPED|passed|failed|^\|" ;;
        cmd:*) timeout "${EXTRA_TIMEOUT:-240}" bash -c "${step#cmd:}" 2>&1 | tail -n 60 | tee -a "$OUT/cmd.log" ;;
        *) echo "unknown step $step" ;;
    esac
done
