#!/usr/bin/env bash
# Configures and builds Lightdesk into build/ (Release, with tests). Extra arguments go to
# CMake's configure step, e.g. -DLIGHTDESK_WITH_CUDA=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
# ccache keys on paths relative to the checkout, so clones in other folders share its cache.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j"$(nproc)"
