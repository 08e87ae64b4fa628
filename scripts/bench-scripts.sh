#!/usr/bin/env bash
# Script speed, for docs/performance.md: bars/s of `tradehost backtest` on
# 1,000,000 generated one-minute bars for sma_cross.rhai and the strategies
# in benches/strategies/ (empty call, rolling windows as an array and as a
# series, `this` holding 10,000 floats).
#
#   scripts/bench-scripts.sh [OTHER_TRADEHOST_BINARY]
#
# With a second binary (e.g. a build of an older commit:
#   git worktree add /tmp/old <rev> && (cd /tmp/old && cargo build --release)
#   scripts/bench-scripts.sh /tmp/old/target/release/tradehost)
# each strategy runs on both, alternating, in the same run; a strategy the
# other binary cannot run shows "-". Figures are the backtest loop only
# (the report's `elapsed`), best of ROUNDS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
new=${NEW:-target/release/tradehost}
old=${1:-}
rounds=${ROUNDS:-2}
[ -n "${NEW:-}" ] || cargo build --release -q
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
scripts/gen-bars.py "$data/BTCUSD.csv"
speed() { # binary strategy -> bars/s or "-"
    "$1" backtest --strategy "$2" --data "$data/BTCUSD.csv" --quiet 2>/dev/null \
        | sed -n 's/^elapsed .*(\([0-9]*\) bars\/s)$/\1/p' | grep . || echo "-"
}
best() { # values... -> the largest number, or "-"
    printf '%s\n' "$@" | grep -v '^-$' | sort -n | tail -1 | grep . || echo "-"
}
strategies=(strategies/sma_cross.rhai benches/strategies/*.rhai)
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(date -u +%F)"
if [ -n "$old" ]; then printf '%-40s %12s %12s %7s\n' strategy "other bars/s" "this bars/s" ratio; else printf '%-40s %12s\n' strategy "bars/s"; fi
for s in "${strategies[@]}"; do
    n=(); o=()
    for _ in $(seq "$rounds"); do
        [ -n "$old" ] && o+=("$(speed "$old" "$s")")
        n+=("$(speed "$new" "$s")")
    done
    bn=$(best "${n[@]}")
    if [ -n "$old" ]; then
        bo=$(best "${o[@]}")
        ratio=$( [ "$bo" != "-" ] && [ "$bn" != "-" ] && python3 -c "print(f'{$bn/$bo:.2f}')" || echo "-")
        printf '%-40s %12s %12s %7s\n' "$s" "$bo" "$bn" "$ratio"
    else
        printf '%-40s %12s\n' "$s" "$bn"
    fi
done
