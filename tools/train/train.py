"""Trains the demo model on generated long-document questions within a time limit, saves the
checkpoint as the engine loads it, and measures greedy exact-match accuracy on held-out examples.

    python3 tools/train/train.py --filler FILLER.txt --tokenizer DIR --out OUT --minutes 6.5

Curriculum: short documents with many examples per step first (retrieval is learned there),
then longer ones. The loss counts the answer tokens fully and the document tokens a little
(plain language modelling keeps the lightning layers' features useful). A time limit, not a step
count, ends training; the checkpoint is written before the limit so a GPU run cannot lose it.
"""
import argparse
import collections
import json
import math
import multiprocessing
import pathlib
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import model as model_lib  # noqa: E402
import prompt  # noqa: E402

# (fraction of the training time at which the stage starts, sequence length, tokens per step,
# fraction of dense examples, fraction of copy examples). Stage A: short documents, a third of them
# copy examples, many steps (the induction copy forms there); stage B: longer documents, dense ones
# mixed with single-task ones like the evaluation's.
CURRICULUM = [(0.0, 512, 32768, 1.0, 0.35), (0.35, 1024, 65536, 0.7, 0.2), (0.6, 4096, 131072, 0.5, 0.1),
              (0.8, 16384, 131072, 0.5, 0.0)]
MAX_DENSE_RECORDS = 64
DOCUMENT_LOSS_WEIGHT = 0.02
FOLLOW_UPS = 7  # later questions about the same document per training example
BALANCE_LOSS_WEIGHT = 0.01
DISTRACTOR_RATE = 0.5  # documents that also hold other tasks' facts (as a real document would)
PAD = 0  # <unk>; padded positions carry no loss
WORKER_HAYSTACKS = None  # set before the batch workers fork


COPY_SPAN = (8, 96)  # tokens per repeated span of a copy example
COPY_SKIP = 3  # a repeated span's first tokens cannot be told from the context: no loss on them


def copy_example(haystacks, rng, length, records):
    """A dense example's text (records, numbers, questions) in its first half, then spans of it
    repeated in random order until `length`: every repeated token after a span's first few is
    predictable only by finding the earlier occurrence of the tokens just read and copying what
    follows, the mechanism a quoted answer needs. Returns ids and loss weights (1 on repeats,
    the document weight on the source)."""
    source = haystacks.example(rng, length // 2, dense_records=records)["ids"][:length // 2]
    ids, weights = list(source), [DOCUMENT_LOSS_WEIGHT] * len(source)
    while len(ids) < length + 1:
        span = rng.randint(*COPY_SPAN)
        begin = rng.randrange(max(1, len(source) - span))
        piece = source[begin:begin + span].tolist()
        ids += piece
        weights += [0.0] * COPY_SKIP + [1.0] * (len(piece) - COPY_SKIP)
    return np.asarray(ids[:length + 1], dtype=np.int64), np.asarray(weights[1:length + 1], dtype=np.float32)


def batch(haystacks, rng, length, size, dense, kinds=None, copy=0.0):
    """Token ids [size, length + 1], loss weights and answer numbers (0 outside answers, k for the
    k-th answer of the batch, for per-answer exact match): examples of length/2..length tokens,
    a fraction `copy` of them copy examples, a fraction `dense` of the rest dense (many facts and
    questions), padded."""
    ids = np.full((size, length + 1), PAD, dtype=np.int64)
    weights = np.zeros((size, length), dtype=np.float32)
    answers = np.zeros((size, length), dtype=np.int64)
    count = 0
    for row in range(size):
        example_length = rng.randint(length // 2, length)
        if rng.random() < copy:
            row_ids, row_weights = copy_example(haystacks, rng, length, rng.randint(4, max(4, length // 48)))
            ids[row] = row_ids
            weights[row] = row_weights
            continue
        if rng.random() < dense:
            records = rng.randint(4, max(4, min(MAX_DENSE_RECORDS, example_length // 48)))
            ex = haystacks.example(rng, example_length, dense_records=records)
        else:
            ex = haystacks.example(rng, example_length, kinds=kinds, distractor_rate=DISTRACTOR_RATE,
                                   follow_ups=FOLLOW_UPS)
        n = min(len(ex["ids"]), length + 1)
        ids[row, :n] = ex["ids"][:n]
        weights[row, :ex["prompt_length"] - 1] = DOCUMENT_LOSS_WEIGHT   # predicting the next document token
        for begin, end in ex["answer_spans"]:
            if end <= n:                                                # predicting an answer and its end of turn
                count += 1
                weights[row, begin - 1:end - 1] = 1.0
                answers[row, begin - 1:end - 1] = count
    return ids, weights, answers, count


def batch_job(job):
    """batch() in a worker process, on the Haystacks the worker inherited (fork). The arrays come
    back as numpy: torch tensors would go through torch.multiprocessing's shared-memory file
    descriptors, which deadlocked in workers forked after the model was loaded from a checkpoint."""
    length, size, dense, copy, kinds, seed = job
    return batch(WORKER_HAYSTACKS, random.Random(seed), length, size, dense, kinds, copy)


def answer_exact(logits, ids, answers, count):
    """Fraction of the batch's answers whose every token is the argmax (teacher-forced greedy)."""
    wrong = ((logits.argmax(-1) != ids[:, 1:]) & (answers > 0)).flatten().long()
    per_answer = torch.zeros(count + 1, dtype=torch.long, device=ids.device).index_add_(0, answers.flatten(), wrong)
    return (per_answer[1:] == 0).float().mean().item()


@torch.no_grad()
def answer_correct(model, ex, device):
    """Greedy exact match, teacher-forced: the greedy answer is right exactly when every answer
    token (and the end of turn) is the argmax given the right tokens before it."""
    ids = torch.from_numpy(ex["ids"].astype(np.int64))[None].to(device)
    p = ex["prompt_length"]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        hidden = model.hidden(ids[:, :-1])
        logits = model.logits(hidden[:, p - 1:].float())
    return bool((logits.argmax(-1) == ids[:, p:]).all())


def evaluate(model, haystacks, device, lengths, per_cell, seed, depths=(0.0, 0.25, 0.5, 0.75, 1.0),
             kinds=("record", "passkey", "needles", "story"), deadline=None):
    """Accuracy per (kind, length, depth) on examples from a seed training never used; beyond 64K
    tokens fewer examples per cell (one at 256K and more), to fit the time."""
    model.eval()
    rng = random.Random(seed)
    results = []
    for length in lengths:
        began, forwards = time.time(), 0
        count = max(1, per_cell * 65536 // max(length, 65536) // 2) if length > 65536 else per_cell
        for kind in kinds:
            for depth in depths:
                if deadline and time.time() > deadline:
                    return results
                hits = 0
                for _ in range(count):
                    ex = haystacks.example(rng, length, kinds=[kind], depth=depth)
                    hits += answer_correct(model, ex, device)
                    forwards += 1
                results.append({"kind": kind, "length": length, "depth": depth, "correct": hits, "total": count})
        summary = {k: sum(r["correct"] for r in results if r["kind"] == k and r["length"] == length) /
                   max(1, sum(r["total"] for r in results if r["kind"] == k and r["length"] == length)) for k in kinds}
        print(f"eval length {length}: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()) +
              f" ({(time.time() - began) / max(1, forwards):.2f} s per example)", flush=True)
    model.train()
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--filler", required=True)
    ap.add_argument("--tokenizer", required=True, help="directory with tokenizer.model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=6.5)
    ap.add_argument("--resume", help="model directory to start from")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--curriculum", help="stages as FRACTION:LENGTH:TOKENS[:DENSE[:COPY]],... (default: the built-in one)")
    ap.add_argument("--rotary-dim", type=int, default=0)
    ap.add_argument("--heads", type=int, default=8, help="attention heads (lightning and softmax query heads)")
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--softmax-layers", default="3,7", help="indices of the softmax attention layers (the shipped model: 3 and 7)")
    ap.add_argument("--kinds", help="train on these task kinds only (comma-separated; single-task examples)")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--workers", type=int, default=6, help="processes building batches")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and short sequences (CPU check)")
    ap.add_argument("--eval-lengths", default="1024,4096,16384,65536")
    ap.add_argument("--eval-per-cell", type=int, default=4)
    ap.add_argument("--eval-minutes", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(args.seed)
    tok = prompt.PromptTokenizer(pathlib.Path(args.tokenizer) / "tokenizer.model")
    haystacks = prompt.Haystacks(tok, pathlib.Path(args.filler).read_text().splitlines())
    prompt.check_fast_path(haystacks)
    curriculum = CURRICULUM
    softmax_layers = [int(i) for i in args.softmax_layers.split(",")]
    if args.tiny:
        config = model_lib.demo_config(hidden=64, layers=8, heads=4, kv_heads=2, head_dim=16, expert_width=32,
                                       rotary_dim=args.rotary_dim, softmax_layers=softmax_layers)
        curriculum = [(0.0, 512, 4096, 1.0, 0.35)]
    else:
        config = model_lib.demo_config(heads=args.heads, head_dim=args.head_dim, rotary_dim=args.rotary_dim,
                                       softmax_layers=softmax_layers)
    if args.curriculum:
        curriculum = [(float(f), int(n), int(t), float(rest[0]) if rest else 0.0, float(rest[1]) if len(rest) > 1 else 0.0)
                      for f, n, t, *rest in (s.split(":") for s in args.curriculum.split(","))]
    kinds = args.kinds.split(",") if args.kinds else None
    config["vocab_size"] = tok.sp.get_piece_size()
    model = model_lib.MiniMaxM1.load(args.resume, device) if args.resume else model_lib.MiniMaxM1(config).to(device)
    print(f"parameters: {sum(p.numel() for p in model.parameters())}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    rng = random.Random(args.seed)
    # Dense examples take milliseconds each to build: worker processes build the batches ahead.
    global WORKER_HAYSTACKS
    WORKER_HAYSTACKS = haystacks
    workers = multiprocessing.get_context("fork").Pool(args.workers)
    pending = collections.deque()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = []
    start = time.time()
    budget = args.minutes * 60
    warmup = args.warmup
    step = 0
    while True:
        elapsed = time.time() - start
        if elapsed > budget:
            break
        fraction = elapsed / budget
        _, length, tokens, dense, copy = [c for c in curriculum if c[0] <= fraction][-1]
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * fraction)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        while len(pending) < 2 * args.workers:
            pending.append(workers.apply_async(batch_job, ((length, max(1, tokens // length), dense, copy, kinds,
                                                            rng.getrandbits(62)),)))
        ids, weights, answers, count = pending.popleft().get()
        ids, weights, answers = (torch.from_numpy(t).to(device, non_blocking=True) for t in (ids, weights, answers))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(ids[:, :-1])
            ce = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view_as(weights)
            loss = (ce * weights).sum() / weights.sum() + BALANCE_LOSS_WEIGHT * model.balance_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.log_every == 0:
            answer = answers > 0
            answer_loss = (ce * answer).sum() / answer.sum()
            copied = (weights == 1.0) & ~answer
            copy_loss = (ce * copied).sum() / copied.sum().clamp(min=1)
            entry = {"step": step, "seconds": round(time.time() - start, 1), "length": length, "lr": lr,
                     "loss": loss.item(), "answer_loss": answer_loss.item(), "copy_loss": copy_loss.item(), "answers": count,
                     "answer_exact": answer_exact(logits, ids, answers, count)}
            log.append(entry)
            print(json.dumps(entry), flush=True)
        step += 1
    workers.terminate()
    model.save(out)
    print(f"saved after {step} steps, {time.time() - start:.0f} s", flush=True)
    lengths = [int(x) for x in args.eval_lengths.split(",")]
    results = evaluate(model, haystacks, device, lengths, args.eval_per_cell, seed=args.seed + 1000,
                       deadline=time.time() + args.eval_minutes * 60)
    (out / "training_log.json").write_text(json.dumps({"config": model.config, "steps": step, "log": log,
                                                       "eval": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
