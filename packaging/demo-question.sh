#!/usr/bin/env bash
# Prints the first question of a kind (story, passkey, record, needles) from a demo document's
# questions file (resources/demo/*questions.json, written by tools/train/demo_document.py with
# one field per line), or with `answer` its expected answer.
#   bash packaging/demo-question.sh KIND QUESTIONS.json [question|answer]
set -euo pipefail
awk -v kind="\"$1\"," -v field="\"${3:-question}\":" '$1 == "\"kind\":" && $2 == kind {found = 1}
  found && $1 == field {sub(/^[^:]*: "/, ""); sub(/",?$/, ""); print; exit}' "$2"
