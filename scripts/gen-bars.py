#!/usr/bin/env python3
"""Write N generated one-minute BTCUSD bars (a seeded random walk) as a
tradehost CSV: scripts/gen-bars.py OUT.csv [N, default 1,000,000]."""
import sys

out_path = sys.argv[1]
count = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
state, price = 7, 30000.0
with open(out_path, "w") as out:
    out.write("timestamp,open,high,low,close,volume\n")
    for i in range(count):
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        step = ((state >> 33) / (1 << 31) - 0.5) * 0.004
        o = price
        price *= 1.0 + step
        out.write(f"{1_600_000_000 + 60 * i},{o:.2f},{max(o, price) * 1.0005:.2f},"
                  f"{min(o, price) * 0.9995:.2f},{price:.2f},1.5\n")
