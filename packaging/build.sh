#!/usr/bin/env bash
# Configures and builds Lightdesk into build/ (Release, with tests). Extra arguments go to
# CMake's configure step, e.g. -DLIGHTDESK_WITH_CUDA=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j"$(nproc)"
