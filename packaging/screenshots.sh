#!/usr/bin/env bash
# Starts the desktop app under Xvfb on the bundled model, has it hold a short conversation about
# a small document (the app's --demo mode), and saves the screenshots into a folder
# (default docs/screenshots). Needs a built tree (packaging/build.sh) and xvfb (setup-debian.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/screenshots}"
app="${LIGHTDESK_APP:-build/app/gui/lightdesk}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/release-notes.md" <<'NOTES'
# Lightdesk 0.1 release notes

Lightdesk runs MiniMax-Text-01 and MiniMax-M1 on your own machine and keeps the processed state
of long documents with each chat session, so a second question costs no second read.
NOTES
mkdir -p "$out"
# A private settings file and session database, so the demo neither reads nor changes the user's own.
export XDG_CONFIG_HOME="$work/config" XDG_DATA_HOME="$work/data"
timeout 120 xvfb-run -a -s "-screen 0 1280x800x24" \
  "$app" --demo "$out" --model resources/models/tiny-a-m1-rd8 --document "$work/release-notes.md" \
  --ask "What does Lightdesk keep with each session?"
ls -l "$out"
