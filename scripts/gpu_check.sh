#!/usr/bin/env bash
# On a GPU machine without network: build Ember with CUDA (sm_90), run the GPU tests and, if asked,
# the CUDA op units. Headers it cannot download travel in .deps/ (nlohmann, googletest source).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/ember-out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/gpus.txt"
python3 -m pip install -q --no-build-isolation --no-deps . -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90 \
  -Cbuild-dir=/tmp/ember-build -Ccmake.define.EMBER_NLOHMANN_INCLUDE="$PWD/.deps/include" 2>&1 | tail -5
python3 -c "import ember; print('cuda devices:', ember._C.cuda_device_count())"
python3 -m pytest -q -rs tests/python/test_cuda_engine.py tests/python/test_numpy_reference.py "$@" 2>&1 \
  | tee "$OUT/pytest_gpu.log" | tail -25
if [[ "${EMBER_GPU_CTEST:-0}" == "1" ]]; then
  cmake -S .deps/googletest -B /tmp/gt -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build /tmp/gt >/dev/null \
    && cmake --install /tmp/gt --prefix /tmp/gtp >/dev/null
  cmake -S . -B /tmp/ct -G Ninja -DEMBER_BUILD_TESTS=ON -DEMBER_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DCMAKE_PREFIX_PATH=/tmp/gtp -DEMBER_NLOHMANN_INCLUDE="$PWD/.deps/include" >/dev/null
  cmake --build /tmp/ct -j"$(nproc)" 2>&1 | tail -3
  (cd /tmp/ct && ctest --output-on-failure -j4) 2>&1 | tee "$OUT/ctest_gpu.log" | tail -15
fi
