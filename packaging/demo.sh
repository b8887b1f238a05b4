#!/usr/bin/env bash
# Lightdesk doing its main job on the bundled demo model: answering questions about a long
# document. Run after packaging/build.sh.
#   bash packaging/demo.sh [--cli] [QUESTION]
# With a display and the desktop app built, it opens the app on the model with the document
# attached and asks the question there. Otherwise lightdesk-cli reads the document into a stored
# session and answers the question, then two more from the same session: those reuse the saved
# state (the lightning states and the softmax layer's K/V) instead of reading the document again.
# The document is resources/demo/demo.txt (about 24K tokens: under a minute on two CPU cores);
# where an NVIDIA GPU is present, the one-million-token resources/demo/demo-1m.txt.gz instead.
set -euo pipefail
cd "$(dirname "$0")/.."

use_gui=1
if [ "${1:-}" = "--cli" ]; then
  use_gui=0
  shift
fi
model=resources/models/lightdesk-demo
cli=build/app/cli/lightdesk-cli
app=build/app/gui/lightdesk
if [ ! -x "$cli" ]; then
  echo "demo: $cli is missing; build first: bash packaging/build.sh" >&2
  exit 1
fi
# Lightdesk's data directory (the app's and the CLI's; LIGHTDESK_DATA_DIR moves it): the demo
# session goes into its session database, the unpacked document beside it.
data="$("$cli" info | sed -n 's/^data directory: //p')"

document=resources/demo/demo.txt
questions=resources/demo/questions.json
if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
  document="$data/demo/demo-1m.txt"
  questions=resources/demo/demo-1m-questions.json
  mkdir -p "$data/demo"
  [ -s "$document" ] || gzip -dc resources/demo/demo-1m.txt.gz > "$document"
fi
question_of() { bash packaging/demo-question.sh "$1" "$questions" "${2:-question}"; }
question_given="${1:-}"
question="${1:-$(question_of story)}"

if [ "$use_gui" = 1 ] && [ -x "$app" ] && [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  exec "$app" --model "$model" --document "$document" --ask "$question"
fi

session="demo-$(date +%Y%m%d-%H%M%S)"
# ask QUESTION EXPECTED [options]: one question in the demo session, with its expected answer.
ask() {
  echo "> $1"
  "$cli" ask --model "$model" --session "$session" --greedy --stats "${@:3}" \
    --question "$1"
  [ -z "$2" ] || echo "(expected: $2)"
  echo
}
expected=""
[ -n "$question_given" ] || expected="$(question_of story answer)"
ask "$question" "$expected" --document "$document"
# The same session again: only the new question is read, after the stored state.
ask "$(question_of passkey)" "$(question_of passkey answer)"
ask "$(question_of record)" "$(question_of record answer)"
echo "The session is kept in $data/sessions.sqlite as \"$session\"; questions with their answers: $questions"
