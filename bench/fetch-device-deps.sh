#!/usr/bin/env bash
# Downloads the Debian 12 packages (and the anchors' Python wheels) that bench/device-check.sh unpacks on a GPU machine (which has
# CUDA, CMake and PyTorch but no package manager and no network): the engine's and the CLI's
# libraries beyond CUDA, with the run-time libraries they link. Run it here, in the repository's
# root; the files land in .debs/ (git-ignored), which a device run carries.
# A device run carries at most 64 MiB with the working tree: the text libraries (ICU alone is
# 20 MB) come only with --cli, for bench/device-check.sh --cli.
# Usage: bash bench/fetch-device-deps.sh [--cli] [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
cli=0
if [ "${1:-}" = --cli ]; then cli=1; shift; fi
dir="${1:-.debs}"
packages=(
  # the engine, its tests and the benchmark
  nlohmann-json3-dev libopenblas-dev libopenblas-pthread-dev libopenblas0 libopenblas0-pthread
  libgfortran5 libquadmath0 libgomp1 googletest libgtest-dev libgmock-dev pkgconf pkgconf-bin libpkgconf3
  # the session store
  libsqlite3-dev libsqlite3-0 libxxhash-dev libxxhash0 libzstd-dev libzstd1
)
# lightdesk-cli: its command line and the text library
[ "$cli" = 1 ] && packages+=(libcli11-dev libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3
  libsentencepiece-dev libsentencepiece0 libicu-dev libicu72 icu-devtools libxml2 libxml2-dev liblzma5)
mkdir -p "$dir"
[ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ] || apt-get update -qq
(cd "$dir" && apt-get download -qq "${packages[@]}")
echo "$(ls "$dir"/*.deb | wc -l) packages in $dir"
# FLA's lightning prefill anchor (bench/anchors.py) comes as a wheel in .whl/, beside CUTLASS's.
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest .whl "fla-core==0.6.0"
