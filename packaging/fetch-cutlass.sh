#!/usr/bin/env bash
# Puts CUTLASS 4.2's headers (the CUDA backend's grouped GEMM is built on them) into .cutlass/,
# where CMake looks by default (LIGHTDESK_CUTLASS_DIR). They come from PyPI's nvidia-cutlass
# wheel, kept in .whl/ (both folders are ignored by git); a machine without network, such as the
# GPU machine, unpacks a wheel carried there. Usage: bash packaging/fetch-cutlass.sh
set -euo pipefail
cd "$(dirname "$0")/.."
version=4.2.0.0
wheel=".whl/nvidia_cutlass-$version-py3-none-any.whl"
[ "$(cat .cutlass/VERSION 2>/dev/null)" = "$version" ] && exit 0
if [ ! -f "$wheel" ]; then
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest .whl "nvidia-cutlass==$version"
fi
rm -rf .cutlass .cutlass.partial
mkdir -p .cutlass.partial
python3 - "$wheel" <<'PY'
import os, sys, zipfile
prefix = "cutlass_library/source/include/"
with zipfile.ZipFile(sys.argv[1]) as wheel:
    for name in wheel.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = ".cutlass.partial/include/" + name[len(prefix):]
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as out:
                out.write(wheel.read(name))
PY
echo "$version" >.cutlass.partial/VERSION
mv .cutlass.partial .cutlass
