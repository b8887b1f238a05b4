"""Plots the loss curves of training logs (train.py's output, one JSON object per line).

    python3 tools/train/plot_training.py OUT.png tools/train/runs/run1-train.log tools/train/runs/run2-train.log
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    out, logs = sys.argv[1], sys.argv[2:]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    offset = 0
    for path in logs:
        entries = [json.loads(line) for line in open(path) if line.startswith("{")]
        steps = [offset + e["step"] for e in entries]
        ax.plot(steps, [e["loss"] for e in entries], label=f"{path.rsplit('/', 1)[-1]}: weighted loss")
        ax.plot(steps, [e["answer_loss"] for e in entries], label=f"{path.rsplit('/', 1)[-1]}: answer tokens")
        offset = steps[-1]
    ax.set_xlabel("step (131072 tokens each)")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_ylim(0, 4)
    ax.legend(fontsize=7)
    ax.set_title("lightdesk-demo training (H200)")
    fig.savefig(out, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
