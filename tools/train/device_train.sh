#!/bin/bash
# One GPU run of the device tool (under 10 minutes): several training variants side by side on
# the one GPU, each trained from scratch (or resumed) for the same time and then evaluated by
# teacher-forced greedy exact match; each variant's checkpoint and log come back as NAME.tgz,
# all logs together in train-logs.txt.
#   bash tools/train/device_train.sh FILLER.txt OUT_DIR MINUTES EVAL_MINUTES EVAL_LENGTHS \
#       'NAME:TRAIN.PY ARGUMENTS' ...
# e.g. 'base:--softmax-layers 7' 'h16:--heads 16 --head-dim 16'
set -u
filler=$1 out=$2 minutes=$3 eval_minutes=$4 eval_lengths=$5
shift 5
here=$(dirname "$0")
workers=$(( $(nproc) / $# - 1 ))
work=$(mktemp -d)
for variant in "$@"; do
  name=${variant%%:*}
  # shellcheck disable=SC2086  # the variant's arguments are meant to split
  python3 "$here/train.py" --filler "$filler" --tokenizer "$here/../../resources/models/lightdesk-demo" \
      --out "$work/$name" --minutes "$minutes" --workers "$workers" --eval-lengths "$eval_lengths" \
      --eval-per-cell 4 --eval-minutes "$eval_minutes" ${variant#*:} > "$work/$name.log" 2>&1 &
done
wait
for variant in "$@"; do
  name=${variant%%:*}
  { echo "=== $name: ${variant#*:}"; cat "$work/$name.log"; } >> "$out/train-logs.txt"
  tar czf "$out/$name.tgz" -C "$work/$name" .
done
ls -l "$out"
