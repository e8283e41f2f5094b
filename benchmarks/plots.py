"""Redraw the figures of docs/benchmarks.md from saved results: `sjfsched bench plots` as a script.

python benchmarks/plots.py --results benchmarks/results/sim.json --out docs/
"""

from __future__ import annotations

import sys

from sjfsched._cli import command

if __name__ == "__main__":
    command(["bench", "plots", *sys.argv[1:]])
