"""Scheduling benchmarks: ``sjfsched bench ...`` (extra ``bench``).

The real :class:`~sjfsched.Scheduler` replays traces of real prompts (with the
real lengths of one model's answers) in virtual time, in front of a simulated
serial backend, under several policies and arrival patterns; ``bench real``
does the same on a real llama.cpp model in wall-clock time.

- ``_traces``: traces from the corpora of ``../shared/data``;
- ``_profiles``: backend speeds (prefill and decode rates);
- ``_policies``: FCFS, sjfsched, the oracle, Clairvoyant's policy, sweeps;
- ``_sim``: virtual-time runs (trio's ``MockClock``);
- ``_metrics``: percentiles by answer length, waits, throughput;
- ``_run``: the benchmark matrix, in processes, with a progress bar;
- ``_report`` and ``_plots``: markdown tables and PNG figures;
- ``_real``: the wall-clock run against llama.cpp;
- ``_cli``: the command line.
"""

from ._cli import configure as configure
from ._cli import run as run

__all__ = ["configure", "run"]
