#!/usr/bin/env bash
# Starts the desktop app under Xvfb on the bundled model, has it hold a short conversation about
# a small document (the app's --demo mode), and saves the screenshots into a folder
# (default docs/screenshots). Needs a built tree (packaging/build.sh) and xvfb (setup-debian.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/screenshots}"
app="${LIGHTDESK_APP:-build/app/gui/lightdesk}"
# The trained demo model when it is there (it answers in words), else the random tiny one.
model="${LIGHTDESK_MODEL:-resources/models/lightdesk-demo}"
ls "$model"/*.safetensors > /dev/null 2>&1 || model=resources/models/tiny-a-m1-rd8
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
# A private settings file and session database, so the demo neither reads nor changes the user's own.
export XDG_CONFIG_HOME="$work/config" XDG_DATA_HOME="$work/data"
timeout 120 xvfb-run -a -s "-screen 0 1280x800x24" \
  "$app" --demo "$out" --model "$model" --document resources/documents/lightdesk-notes.md \
  --ask "What does Lightdesk keep with each session?"
ls -l "$out"
