#!/bin/bash
# Pods that come, go and sit idle, for one or more vrouter binaries (alternated, a fresh lab
# each): ping percentiles between pods with 0 and 54 idle pods on nodes 1 and 2, then the
# pings' worst round trip while those 108 pods are removed. Root; the binaries' lab needs the
# same tools as `vrouter lab up --static`. BENCHMARKS.md, "Issue #13, fourth session".
#
#     scripts/pod-churn.sh [ROUNDS=2] VROUTER...
set -euo pipefail
rounds=2
if [[ ${1:-} =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi
(($# > 0)) || { echo "usage: $0 [ROUNDS] VROUTER..." >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
ctl=$here/target/release/vrouterctl
[[ -x $ctl ]] || { echo "$ctl missing: cargo build --release --workspace" >&2; exit 2; }
prefix=vpc$(printf %04x $((RANDOM)))
lab() { "$1" lab "${@:2}" --prefix "$prefix" >/dev/null; }
current=
trap '[[ -n $current ]] && lab "$current" down' EXIT

pings() { # NS DST COUNT -> "p50 p90 p99" in ms
    ip netns exec "$1" ping -c "$3" -i 0.005 "$2" | grep -o 'time=[0-9.]*' | cut -d= -f2 | sort -n |
        awk '{a[NR]=$1} END {printf "%s / %s / %s", a[int(NR*0.5)], a[int(NR*0.9)], a[int(NR*0.99)]}'
}
pods() { # add|del
    for n in 1 2; do for i in $(seq 10 63); do
        if [[ $1 == add ]]; then
            "$ctl" -s "/run/vrouter/$prefix-n$n.sock" endpoint add --tap "vx$n-$i" \
                --mac "02:00:0$n:00:00:$(printf %02x "$i")" --addr "10.244.$n.$i" "idle$i" >/dev/null
        else
            "$ctl" -s "/run/vrouter/$prefix-n$n.sock" endpoint del "idle$i" >/dev/null
        fi
    done; done
}

for round in $(seq "$rounds"); do
    for bin in "$@"; do
        current=$bin
        lab "$bin" up --static --vrouter "$bin"
        echo "$bin, round $round"
        echo "  no idle pods:  1a->2a $(pings "$prefix-p1a" 10.244.2.2 400) | 1a->1b $(pings "$prefix-p1a" 10.244.1.3 400)"
        pods add
        echo "  54 idle pods:  1a->2a $(pings "$prefix-p1a" 10.244.2.2 400) | 1a->1b $(pings "$prefix-p1a" 10.244.1.3 400)"
        log=$(mktemp)
        ip netns exec "$prefix-p1a" ping -q -c 600 -i 0.005 10.244.2.2 >"$log" &
        sleep 0.3
        start=$(date +%s.%N)
        pods del
        took=$(echo "$(date +%s.%N) - $start" | bc)
        wait
        echo "  removing 108:  ${took} s; $(tail -1 "$log")"
        rm -f "$log"
        lab "$bin" down
        current=
    done
done
