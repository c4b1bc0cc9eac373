#!/usr/bin/env python3
"""Paired ratios of a round-robin bench.sh run (bench-out/results.jsonl).

scripts/bench.sh runs every server once per round (run r of each server
back to back), so the servers of one round sample the same spell of outside
load. On a shared machine the ratio of two servers within a round is far
steadier than either figure alone: this prints, per case and metric, each
server's median and the median (and range) of its per-round ratio against
the baseline server.

    scripts/paired.py [RESULTS.jsonl] [--baseline ceiling] [--metric p99_us ...]
"""
import argparse
import json
import statistics
from collections import defaultdict

DEFAULT_METRICS = {
    "lat": ["req_per_s", "p50_us", "p99_us", "server_cpu_us_per_kline"],
    "tput": ["lines_per_s", "mb_per_s", "server_cpu_us_per_kline"],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="?", default="bench-out/results.jsonl")
    ap.add_argument("--baseline", default="ceiling")
    ap.add_argument("--metric", action="append", help="metric key (default: per scenario)")
    a = ap.parse_args()
    # case -> label -> list of records in run order
    runs = defaultdict(lambda: defaultdict(list))
    scen = {}
    for line in open(a.results):
        d = json.loads(line)
        if d.get("scenario") in (None, "failed"):
            continue
        runs[d["case"]][d["label"]].append(d)
        scen[d["case"]] = d["scenario"]
    for case, by in runs.items():
        metrics = a.metric or DEFAULT_METRICS.get(scen[case], [])
        base = by.get(a.baseline)
        n = min(len(v) for v in by.values())
        print(f"\n### {case}: {n} rounds; ratio = server / {a.baseline} within each round\n")
        head = "| server | " + " | ".join(f"{m} (median) | ratio (median, min-max)" for m in metrics) + " |"
        print(head)
        print("|---" * (1 + 2 * len(metrics)) + "|")
        for label, recs in by.items():
            cells = []
            for m in metrics:
                vals = [r[m] for r in recs[:n] if m in r]
                if not vals:
                    cells += ["-", "-"]
                    continue
                med = statistics.median(vals)
                if base and label != a.baseline:
                    rs = [r[m] / b[m] for r, b in zip(recs[:n], base[:n]) if m in r and m in b and b[m]]
                    rat = f"{statistics.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f})" if rs else "-"
                else:
                    rat = "1.00"
                cells += [f"{med:.1f}" if med < 1000 else f"{med:.0f}", rat]
            print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
