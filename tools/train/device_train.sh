#!/bin/bash
# The GPU run that made the shipped checkpoint (one `run` call of the device tool, under 10
# minutes): the shipped variant (softmax layers without RoPE) and, beside it on the same GPU for
# comparison, a variant with RoPE on half of each head (rotary_dim 16, as M1 uses half), each
# trained from scratch and then evaluated by greedy exact match from 4K to 1M tokens.
#   bash tools/train/device_train.sh FILLER.txt OUT_DIR
set -u
filler=$1 out=$2
here=$(dirname "$0")
train() {  # name rotary_dim minutes workers
  python3 "$here/train.py" --filler "$filler" --tokenizer "$here/../../resources/models/lightdesk-demo" \
      --out "$out/$1" --softmax-layers 3,7 --rotary-dim "$2" --minutes "$3" --workers "$4" --lr 3e-3 \
      --eval-lengths 4096,16384,65536,262144,1048576 --eval-per-cell 4 --eval-minutes "$5" > "$out/$1.log" 2>&1
}
train norope 0 6.0 8 2.2 &
train rope16 16 4.0 5 1.5 &
wait
