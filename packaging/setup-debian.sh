#!/usr/bin/env bash
# Installs what Lightdesk builds and packages with on Debian 12, from Debian's own packages.
# The CUDA toolkit is optional: where nvcc is found, the CUDA backend is built too, with CUTLASS's
# headers (packaging/fetch-cutlass.sh: PyPI's nvidia-cutlass wheel, through pip).
# clang-14 with its runtime builds the libFuzzer harnesses (tests/fuzz); Ninja builds several targets
# of one build in parallel (the sanitizer and fuzzing builds); sqlite3 remakes the fuzzers'
# session database seed.
set -euo pipefail
packages=(
  build-essential cmake ccache pkg-config python3-pip python3-venv curl
  nlohmann-json3-dev libcli11-dev libopenblas-dev libcpp-httplib-dev
  libopencv-core-dev libopencv-imgcodecs-dev libopencv-imgproc-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libpcre2-dev libicu-dev libpoppler-cpp-dev libxml2-dev libsentencepiece-dev
  libsqlite3-dev libxxhash-dev libzstd-dev zlib1g-dev
  qt6-base-dev xvfb xauth fonts-dejavu-core
  dpkg-dev file lintian help2man man-db librsvg2-bin appstream desktop-file-utils
  clang-14 libclang-rt-14-dev ninja-build sqlite3
)
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  bash "$(dirname "$0")/fetch-cutlass.sh"
fi
