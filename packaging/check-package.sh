#!/usr/bin/env bash
# Builds the Debian package from the build tree (build/, as packaging/build.sh configured it),
# lints it, installs it with apt, runs the installed programs on the installed demo model, then
# purges it and checks that nothing it installed is left behind.
#   bash packaging/check-package.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
build="${build%/}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
fail() { echo "check-package: $*" >&2; exit 1; }

# Programs built with CUDA link the toolkit's libraries under /usr/local/cuda, which no Debian
# package owns. Until the CUDA backend is the run-time plugin of a lightdesk-cuda package
# (packaging/README.md), the package comes from a CUDA-free tree beside the CUDA one. At the
# same depth, with ccache's base directory at the checkout (as .ci/run sets it), the libraries
# without CUDA code come out of ccache.
if grep -q '^LIGHTDESK_WITH_CUDA:BOOL=ON' "$build/CMakeCache.txt"; then
  cmake -S . -B "$build-package" -DCMAKE_BUILD_TYPE=Release -DLIGHTDESK_WITH_CUDA=OFF -DLIGHTDESK_BUILD_TESTS=OFF
  build="$build-package"
fi
# The package target builds what is out of date in the tree first, then runs CPack.
rm -f "$build"/lightdesk_*.deb "$build"/lightdesk-*.deb
cmake --build "$build" -j"$(nproc)" --target package
debs=("$build"/lightdesk_*_amd64.deb)
[ -f "${debs[0]}" ] || fail "CPack wrote no lightdesk_*_amd64.deb into $build"
deb="${debs[0]}"
dpkg-deb --info "$deb"
depends="$(dpkg-deb --field "$deb" Depends)"
[ -n "$depends" ] || fail "the package declares no dependencies (dpkg-shlibdeps did not run)"
if grep -qi cuda <<< "$depends"; then fail "the main package depends on CUDA: $depends"; fi

# Lintian: errors and warnings fail; the overrides the package ships explain what is left.
lintian --fail-on error,warning --display-info "$deb"
desktop-file-validate packaging/desktop/*.desktop
appstreamcli validate --no-net packaging/desktop/*.metainfo.xml

# Install with apt (it resolves the dependencies), from a clean start.
if dpkg-query -W -f='${Status}' lightdesk 2>/dev/null | grep -q "install ok installed"; then
  DEBIAN_FRONTEND=noninteractive $sudo apt-get purge -y -qq lightdesk
fi
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
man -w lightdesk-cli > /dev/null || fail "no man page for lightdesk-cli"

# Purge, then nothing the package listed may remain but directories other packages own too.
DEBIAN_FRONTEND=noninteractive $sudo apt-get purge -y -qq lightdesk
left=()
while IFS= read -r path; do
  if [ -d "$path" ] && [ ! -L "$path" ]; then
    dpkg-query --search "$path" > /dev/null 2>&1 || left+=("$path/")
  elif [ -e "$path" ] || [ -L "$path" ]; then
    left+=("$path")
  fi
done < "$installed_files"
if [ ${#left[@]} -gt 0 ]; then printf '  %s\n' "${left[@]}" >&2; fail "left behind after purge"; fi
echo "check-package: $(basename "$deb") built, linted, installed, ran and purged cleanly"
