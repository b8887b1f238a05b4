#!/usr/bin/env bash
# Prints the first question of a kind (story, passkey, record, needles) from a demo document's
# questions file (resources/demo/*questions.json, written by tools/train/demo_document.py with
# one field per line).
#   bash packaging/demo-question.sh KIND QUESTIONS.json
set -euo pipefail
awk -v kind="\"$1\"," '$1 == "\"kind\":" && $2 == kind {found = 1}
  found && $1 == "\"question\":" {sub(/^[^:]*: "/, ""); sub(/",?$/, ""); print; exit}' "$2"
