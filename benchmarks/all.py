"""Every simulated benchmark of docs/benchmarks.md: `sjfsched bench all` as a script.

    python benchmarks/all.py --data ../shared/data --out docs/ --jobs 2

Writes the figures to docs/img/bench-*.png and the raw results to
benchmarks/results/sim.json, and prints every table of docs/benchmarks.md.
"""

from __future__ import annotations

import sys

from sjfsched._cli import command

if __name__ == "__main__":
    command(["bench", "all", *sys.argv[1:]])
