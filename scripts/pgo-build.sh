#!/usr/bin/env bash
# Optional profile-guided (PGO) build of tradehost. The default build
# (`cargo build --release`, thin LTO) uses no profile; this one is for
# operators who want the faster script engine and can spend two extra release builds on it.
#
#   scripts/pgo-build.sh            # -> target/pgo/use/release/tradehost
#
# Needs llvm-profdata of the toolchain's own LLVM (`rustup component add
# llvm-tools`). Steps: an instrumented build, backtests of the shipped and
# benchmark strategies on 200,000 generated bars as the training run, the
# profiles merged, and a release build that uses them. Measure it against
# the default build with `scripts/bench-scripts.sh target/pgo/use/release/tradehost`
# (docs/performance.md lists the gain measured on our machine).
set -euo pipefail
cd "$(dirname "$0")/.."
profdata=$(find "$(rustc --print sysroot)" -name llvm-profdata -type f | head -1)
if [ -z "$profdata" ]; then
    echo "pgo-build: llvm-profdata not found; run: rustup component add llvm-tools" >&2
    exit 1
fi
root=$PWD/target/pgo
profiles=$root/profiles
rm -rf "$profiles" && mkdir -p "$profiles"

echo "pgo-build: 1/4 instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$profiles" cargo build --release -q --target-dir "$root/gen"

echo "pgo-build: 2/4 training run" >&2
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
scripts/gen-bars.py "$data/BTCUSD.csv" 200000
for s in strategies/*.rhai examples/strategies/*.rhai benches/strategies/*.rhai; do
    # ML and other strategies that need more than bars may refuse to run: that is fine for training.
    "$root/gen/release/tradehost" backtest --strategy "$s" --data "$data/BTCUSD.csv" --quiet > /dev/null 2>&1 || true
done

echo "pgo-build: 3/4 merging profiles" >&2
"$profdata" merge -o "$profiles/merged.profdata" "$profiles"

echo "pgo-build: 4/4 optimised build" >&2
RUSTFLAGS="-Cprofile-use=$profiles/merged.profdata" cargo build --release -q --target-dir "$root/use"
echo "$root/use/release/tradehost"
