#!/usr/bin/env bash
# Runs every test Ember has: the C++ units (ctest, with the CUDA code compiled where nvcc exists;
# the CUDA tests skip without a GPU), the parser units again under ASan+UBSan, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS="${EMBER_JOBS:-$(nproc)}"
CUDA_ARCHS="${EMBER_CUDA_ARCHS:-90}"

cmake -S . -B build/tests -DEMBER_BUILD_TESTS=ON -DEMBER_CUDA="${EMBER_CUDA:-AUTO}" \
  -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS" >/dev/null
cmake --build build/tests -j"$JOBS"
(cd build/tests && ctest --output-on-failure -j"$JOBS")

if [[ "${EMBER_SKIP_SANITIZE:-0}" != "1" ]]; then
  cmake -S . -B build/asan -DEMBER_BUILD_TESTS=ON -DEMBER_CUDA=OFF -DEMBER_SANITIZE=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  targets=$(cd tests/cpp && ls test_safetensors.cc test_gguf_*.cc test_hf_config.cc test_model_files.cc 2>/dev/null | sed 's/\.cc$//')
  cmake --build build/asan -j"$JOBS" --target $targets
  for t in $targets; do ASAN_OPTIONS=detect_leaks=1 "build/asan/$t" --gtest_brief=1; done
fi

python -m pytest -q tests/python "$@"
