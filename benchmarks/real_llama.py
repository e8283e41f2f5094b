"""FCFS against sjfsched on a real llama.cpp model, wall clock: `sjfsched bench real` as a script.

    python benchmarks/real_llama.py --data ../shared/data

A burst of 36 requests (real ShareGPT prompts, answer lengths half the
trace's) runs through a random-weight Llama of about 20 ms per token on one
CPU thread, first come first served and then with sjfsched's defaults, each
generation running to exactly its trace length; then the same requests run
in virtual time at the rates measured on the model, and the two short-request
gains are compared.  It takes about 5 minutes; run it on a quiet machine (it
prints the load average before and after).  Exit status 1 if the real and the
simulated gains are more than 10 points apart.
"""

from __future__ import annotations

import sys

from sjfsched._cli import command

if __name__ == "__main__":
    command(["bench", "real", *sys.argv[1:]])
