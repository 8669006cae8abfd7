#!/usr/bin/env python3
"""Two vrouter binaries side by side: `vrouter bench pipeline|fib` alternately (ABBA order),
N runs each, medians and the median of the per-pair ratios. The pipeline runs are pinned to
core 1 (one thread); the FIB's are not (its update phases use two threads). Both binaries need
the in-memory benchmarks (`cargo build --release --features testing`).

    scripts/ab-bench.py OLD_VROUTER NEW_VROUTER [N=5] [pipeline,fib]
"""
import json, subprocess, statistics, sys
old, new, n = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 5
what = sys.argv[4] if len(sys.argv) > 4 else "pipeline,fib"
fields = {"pipeline": ["forward_mpps", "encap_acl_mpps", "decap_mpps"],
          "fib": ["lookups_per_sec", "ns_per_lookup", "bytes_per_prefix", "updates_per_sec", "paced_reader_slowdown"]}
PIN = ["taskset", "-c", "1"] if what == "pipeline" else []
res = {}
for bench in what.split(","):
    for i in range(n):
        for tag, b in (("old", old), ("new", new)) if i % 2 == 0 else (("new", new), ("old", old)):
            out = subprocess.run(PIN + [b, "bench", bench, "--seconds", "1"], capture_output=True, text=True, check=True).stdout
            r = json.loads(out)
            for f in fields[bench]:
                res.setdefault((bench, f), {}).setdefault(tag, []).append(r[f])
            print(bench, tag, i, {f: round(r[f], 3) for f in fields[bench]}, file=sys.stderr, flush=True)
print(f"{'bench/figure':36} {'old median':>14} {'new median':>14} {'new/old':>8} {'median of pair ratios':>22}")
for (bench, f), d in res.items():
    o, w = statistics.median(d["old"]), statistics.median(d["new"])
    pairs = statistics.median(b / a for a, b in zip(d["old"], d["new"]))
    print(f"{bench + '/' + f:36} {o:14.4g} {w:14.4g} {w / o:8.3f} {pairs:22.3f}")
