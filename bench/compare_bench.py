#!/usr/bin/env python3
"""Compares lightdesk-bench runs: BASELINE_LOG... -- TREE_LOG...

Each row ("  kernel  shape  1.2345 ms ...") takes its fastest time over a side's logs; prints the
tree's time over the baseline's per row, and exits 1 when a row is more than 3 % slower."""
import re
import sys

ROW = re.compile(r"^  (\S.*?)\s+(\d+\.\d+) ms\b")
LIMIT = 1.03


def fastest(paths):
    rows = {}
    for path in paths:
        with open(path) as log:
            for line in log:
                match = ROW.match(line)
                if match:
                    key = " ".join(match.group(1).split())
                    rows[key] = min(rows.get(key, float("inf")), float(match.group(2)))
    return rows


def main(argv):
    if "--" not in argv:
        sys.exit("usage: compare_bench.py BASELINE_LOG... -- TREE_LOG...")
    split = argv.index("--")
    baseline, tree = fastest(argv[:split]), fastest(argv[split + 1:])
    slower = []
    print(f"  {'row':<62} {'baseline ms':>12} {'tree ms':>10} {'ratio':>7}")
    for key, base_ms in baseline.items():
        if key not in tree:
            print(f"  {key:<62} {base_ms:12.4f} {'(missing)':>10}")
            slower.append(key)
            continue
        ratio = tree[key] / base_ms
        print(f"  {key:<62} {base_ms:12.4f} {tree[key]:10.4f} {ratio:7.3f}{'  SLOWER' if ratio > LIMIT else ''}")
        if ratio > LIMIT:
            slower.append(key)
    for key in tree.keys() - baseline.keys():
        print(f"  {key:<62} {'(new)':>12} {tree[key]:10.4f}")
    print(f"{len(baseline)} rows compared; {len(slower)} more than {100 * (LIMIT - 1):.0f} % slower")
    return 1 if slower else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
