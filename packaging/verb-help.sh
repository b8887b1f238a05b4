#!/usr/bin/env bash
# Writes a help2man include file with a VERBS section: the --help of each of a program's
# subcommands (CLI11's "Subcommands:" lists), nested ones too, so the man page lists every verb's
# options as the program has them.
#   bash packaging/verb-help.sh PROGRAM > verbs.h2m
set -euo pipefail
program="$1"
# The subcommand names a --help output lists.
subcommands() { awk '/^Subcommands:/ {inside = 1; next} inside && /^  [^ ]/ {print $1} inside && /^$/ {inside = 0}'; }
# Roff that shows the text as it is: escaped backslashes, no line read as a request.
verbatim() { sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/"; }
section() {
  local words=("$@") help
  help="$("$program" "${words[@]}" --help)"
  if [ ${#words[@]} -gt 0 ]; then
    printf '.SS "%s"\n.nf\n' "$(basename "$program") ${words[*]}"
    verbatim <<< "$help"
    printf '.fi\n'
  fi
  local verb
  for verb in $(subcommands <<< "$help"); do section "${words[@]}" "$verb"; done
}
echo "[VERBS]"
section
