"""Scheduling benchmarks on real traces, in virtual time: `sjfsched bench sim` as a script.

    python benchmarks/scheduling.py --data ../shared/data                      # the standard tables
    python benchmarks/scheduling.py --policies sweep --scenarios poisson0.74    # aging and max_wait sweeps
    python benchmarks/scheduling.py --help

Every option is that of `sjfsched bench sim`; docs/benchmarks.md explains the
traces, the backend rates, the policies and the metrics.  `sjfsched bench all`
(or benchmarks/all.py) produces everything docs/benchmarks.md shows.
"""

from __future__ import annotations

import sys

from sjfsched._cli import command

if __name__ == "__main__":
    command(["bench", "sim", *sys.argv[1:]])
