#!/usr/bin/env bash
# Builds the Debian packages from the build tree (build/, as packaging/build.sh configured it),
# lints them, installs them with apt, runs the installed programs on the installed demo model
# (without the CUDA plugin, then with it where the tree built it), then purges them and checks
# that nothing they installed is left behind.
#   bash packaging/check-package.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
build="${build%/}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
fail() { echo "check-package: $*" >&2; exit 1; }

# The package target builds what is out of date in the tree first, then runs CPack: the main
# package, and in a tree with CUDA the lightdesk-cuda package of the CUDA plugin.
rm -f "$build"/lightdesk_*.deb "$build"/lightdesk-*.deb
cmake --build "$build" -j"$(nproc)" --target package
debs=("$build"/lightdesk_*_amd64.deb)
[ -f "${debs[0]}" ] || fail "CPack wrote no lightdesk_*_amd64.deb into $build"
deb="${debs[0]}"
cuda_deb=""
if grep -q '^LIGHTDESK_WITH_CUDA:BOOL=ON' "$build/CMakeCache.txt"; then
  cuda_debs=("$build"/lightdesk-cuda_*_amd64.deb)
  [ -f "${cuda_debs[0]}" ] || fail "a build with CUDA wrote no lightdesk-cuda_*_amd64.deb into $build"
  cuda_deb="${cuda_debs[0]}"
fi
dpkg-deb --info "$deb"
depends="$(dpkg-deb --field "$deb" Depends)"
[ -n "$depends" ] || fail "the package declares no dependencies (dpkg-shlibdeps did not run)"
if grep -qi cuda <<< "$depends"; then fail "the main package depends on CUDA: $depends"; fi
# Nothing in it may link CUDA: the engine loads the CUDA backend from lightdesk-cuda's plugin.
unpacked="$(mktemp -d)"
dpkg-deb -x "$deb" "$unpacked"
for program in "$unpacked"/usr/bin/*; do
  if readelf -d "$program" | grep -E "NEEDED.*(cuda|cublas|nccl)"; then fail "$(basename "$program") links CUDA"; fi
done
rm -rf "$unpacked"
if [ -n "$cuda_deb" ]; then
  dpkg-deb --info "$cuda_deb"
  version="$(dpkg-deb --field "$deb" Version)"
  cuda_depends="$(dpkg-deb --field "$cuda_deb" Depends)"
  grep -qF "lightdesk (= $version)" <<< "$cuda_depends" ||
    fail "lightdesk-cuda does not depend on lightdesk (= $version): $cuda_depends"
  grep -qE "/lib/(.*/)?lightdesk/liblightdesk_cuda.so$" <<< "$(dpkg-deb --contents "$cuda_deb")" ||
    fail "lightdesk-cuda lacks LIBDIR/lightdesk/liblightdesk_cuda.so"
fi

# Lintian: errors and warnings fail; the overrides the package ships explain what is left.
lintian --fail-on error,warning --display-info "$deb" $cuda_deb
desktop-file-validate packaging/desktop/*.desktop
appstreamcli validate --no-net packaging/desktop/*.metainfo.xml

# Install with apt (it resolves the dependencies), from a clean start.
for package in lightdesk-cuda lightdesk; do
  if dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get purge -y -qq "$package"
  fi
done
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "./$deb"
installed_files="$(mktemp)"
work="$(mktemp -d)"
trap 'rm -rf "$installed_files" "$work"' EXIT
dpkg -L lightdesk > "$installed_files"

# The installed programs, from a directory outside the source tree: the CLI without --model
# finds the installed demo model and answers from the installed demo document.
data=/usr/share/lightdesk
[ "$(command -v lightdesk-cli)" = /usr/bin/lightdesk-cli ] || fail "lightdesk-cli is not /usr/bin/lightdesk-cli"
question="$(bash packaging/demo-question.sh passkey "$data/demo/questions.json")"
expected="$(bash packaging/demo-question.sh passkey "$data/demo/questions.json" answer)"
# The lines around the answer's sentence in the installed demo document (about 1K tokens: a
# second or two; the whole document takes a minute on two cores).
line="$(grep -n -F -m1 "$expected" "$data/demo/demo.txt" | cut -d: -f1)"
[ -n "$line" ] || fail "the installed demo document lacks \"$expected\""
sed -n "$((line > 5 ? line - 5 : 1)),$((line + 5))p" "$data/demo/demo.txt" > "$work/excerpt.txt"
answer="$(cd "$work" && HOME="$work" lightdesk-cli ask --document excerpt.txt --question "$question" \
            --max-new-tokens 12 --greedy 2> "$work/ask.err")" \
  || { cat "$work/ask.err" >&2; fail "the installed lightdesk-cli ask failed"; }
echo "installed lightdesk-cli ask: $question -> $answer (expected: $expected)"
# A short answer is the start of the expected one.
[ -n "$answer" ] && [[ "$expected" == "$answer"* ]] || fail "the installed lightdesk-cli ask answered \"$answer\""
if [ -x /usr/bin/lightdesk ]; then
  (cd "$work" && HOME="$work" QT_QPA_PLATFORM=offscreen lightdesk --help) > "$work/app-help" \
    || fail "the installed lightdesk --help failed"
  grep -q -- "--model" "$work/app-help" || fail "the installed lightdesk --help does not list --model"
fi
for program in lightdesk-cli lightdesk-server; do
  man -w "$program" > /dev/null || fail "no man page for $program"
done
# Without lightdesk-cuda the programs run on the CPU and say why.
(cd "$work" && HOME="$work" lightdesk-cli info --model "$data/models/lightdesk-demo") > "$work/info" \
  || fail "the installed lightdesk-cli info failed"
grep -q "^gpus: none (.*liblightdesk_cuda.so is not installed" "$work/info" \
  || fail "lightdesk-cli info does not say that the CUDA plugin is not installed: $(grep gpu "$work/info")"
# The installed server, on the installed demo model (no --model), answers /v1/models.
(cd "$work" && HOME="$work" exec lightdesk-server --port 0 --states-in-memory) > "$work/server.out" 2>&1 &
server=$!
for _ in $(seq 100); do grep -q "serving" "$work/server.out" && break; sleep 0.1; done
port="$(grep -o 'http://127.0.0.1:[0-9]*' "$work/server.out" | cut -d: -f3)"
models="$(curl -sf "http://127.0.0.1:${port:-0}/v1/models")" || { kill "$server"; cat "$work/server.out" >&2; fail "the installed lightdesk-server did not answer"; }
kill "$server"
wait "$server" || true
grep -q '"lightdesk-demo"' <<< "$models" || fail "the installed lightdesk-server lists no lightdesk-demo: $models"
echo "installed lightdesk-server: $(head -2 "$work/server.out" | tr '\n' ' ')"
packages=(lightdesk)
if [ -n "$cuda_deb" ]; then
  # With it, the plugin loads: it runs the model on a GPU, or says there is none (not that it
  # cannot be loaded).
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "./$cuda_deb"
  dpkg -L lightdesk-cuda >> "$installed_files"
  packages=(lightdesk-cuda lightdesk)
  (cd "$work" && HOME="$work" lightdesk-cli info --model "$data/models/lightdesk-demo") > "$work/info" \
    || fail "lightdesk-cli info failed with lightdesk-cuda installed"
  echo "with lightdesk-cuda: $(grep -E '^(backend|gpu)' "$work/info" | tr '\n' ' ')"
  if grep -q "^gpus: none" "$work/info"; then
    grep -q "^gpus: none (the cuda backend is not available: no.*CUDA device" "$work/info" \
      || fail "the installed CUDA plugin did not load: $(grep '^gpus' "$work/info")"
  fi
fi

# Purge, then nothing the package listed may remain but directories other packages own too.
DEBIAN_FRONTEND=noninteractive $sudo apt-get purge -y -qq "${packages[@]}"
left=()
while IFS= read -r path; do
  if [ -d "$path" ] && [ ! -L "$path" ]; then
    dpkg-query --search "$path" > /dev/null 2>&1 || left+=("$path/")
  elif [ -e "$path" ] || [ -L "$path" ]; then
    left+=("$path")
  fi
done < "$installed_files"
if [ ${#left[@]} -gt 0 ]; then printf '  %s\n' "${left[@]}" >&2; fail "left behind after purge"; fi
echo "check-package: $(basename "$deb") ${cuda_deb:+and $(basename "$cuda_deb") }built, linted, installed, ran and purged cleanly"
