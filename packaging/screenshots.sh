#!/usr/bin/env bash
# Starts the desktop app under Xvfb, has it walk the flows of docs/walkthrough.md with a document
# (the app's --demo mode: a long read stopped and sent again, a follow-up, reopening, search,
# regenerate, an edit, an error), and saves the screenshots into a folder (default docs/screenshots). Needs
# a built tree (packaging/build.sh) and xvfb (setup-debian.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/screenshots}"
app="${LIGHTDESK_APP:-build/app/gui/lightdesk}"
resources="${LIGHTDESK_RESOURCES:-resources}"
# The trained demo model with its document when they are there (it answers from the document),
# else the random tiny model (its answers are noise) with a short note.
if ls "$resources"/models/lightdesk-demo/*.safetensors > /dev/null 2>&1 && [ -f "$resources/demo/demo.txt" ]; then
  model="$resources/models/lightdesk-demo"
  document="$resources/demo/demo.txt"
  first="$(bash packaging/demo-question.sh story "$resources/demo/questions.json")"
  second="$(bash packaging/demo-question.sh passkey "$resources/demo/questions.json")"
else
  model="$resources/models/tiny-a-m1-rd8"
  document="$resources/documents/lightdesk-notes.md"
  first="What does Lightdesk keep with each session?"
  second="And in one sentence?"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
# Only this run's pictures: which ones a run takes depends on the model and the document.
rm -f "$out"/*.png
# A private settings file and session database, so the demo neither reads nor changes the
# user's own; greedy answers, so the pictures repeat.
export XDG_CONFIG_HOME="$work/config" XDG_DATA_HOME="$work/data" LIGHTDESK_DATA_DIR="$work/data/Lightdesk"
mkdir -p "$work/config/Lightdesk"
printf '[sampling]\nM1\\temperature=0\nText01\\temperature=0\n' > "$work/config/Lightdesk/Lightdesk.conf"
# The demo document is 24K tokens: reading it takes under a minute on two CPU cores.
timeout 600 xvfb-run -a -s "-screen 0 1280x800x24" \
  "$app" --demo "$out" --model "$model" --document "$document" --ask "$first" --ask "$second"
# Scale 2 (a high-density screen): the tiny model's quick run on a screen of twice the pixels, in
# a settings file and database of its own; its model-and-document and system-prompt pictures are
# kept (the tiny model's answers are noise).
export XDG_CONFIG_HOME="$work/config2" XDG_DATA_HOME="$work/data2" LIGHTDESK_DATA_DIR="$work/data2/Lightdesk"
mkdir -p "$work/config2/Lightdesk"
cp "$work/config/Lightdesk/Lightdesk.conf" "$work/config2/Lightdesk/"
QT_SCALE_FACTOR=2 timeout 300 xvfb-run -a -s "-screen 0 2560x1600x24" \
  "$app" --demo "$work/scale2" --model "$resources/models/tiny-a-m1-rd8" \
  --document "$resources/documents/lightdesk-notes.md" --ask "What does Lightdesk keep with each session?" \
  --ask "And in one sentence?"
cp "$work/scale2/01-model-and-document.png" "$out/17-scale-2.png"
cp "$work/scale2/19-system-prompt.png" "$out/21-scale-2-system-prompt.png"
ls -l "$out"
