"""The fault-injection suite's switches and its result file.

`make chaos` runs everything here (SRLM_CHAOS=1) and writes bench/results/chaos.json;
`make test` runs the subset that fits CI's budget: one kill per stage at a drawn moment and
one between two writes in SFT, responses and the merge, a few input kinds; on Slurm,
preemption during SFT, two submits at once, `scancel` of a running task and a silent
controller ending a wait (about 2.5 min together). Tests marked chaos_full are skipped there,
with the reason: on Slurm, a submit killed while queueing, slurmd killed and restarted (about
6 min, most of it Slurm noticing the lost tasks), slurmctld restarted while submit waits, a
task timed out more often than slurm.max_timeouts allows (about 3.5 min) and two-rank
DeepSpeed SFT preempted (about 2 min).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import pytest

FULL = os.environ.get("SRLM_CHAOS") == "1"
RESULTS: list[dict] = []


def pytest_configure(config):
    config.addinivalue_line("markers", "chaos_full: part of the full fault-injection suite (make chaos); "
                                       "make test skips it")


def pytest_collection_modifyitems(config, items):
    if FULL:
        return
    skip = pytest.mark.skip(reason="full fault-injection suite only: run `make chaos` (SRLM_CHAOS=1)")
    for item in items:
        if "chaos_full" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def chaos_results():
    """Each scenario appends {scenario, faults: {kind: n}, records_lost, records_duplicated,
    outputs_differing, seconds}; written to $SRLM_CHAOS_RESULTS at the end of the session.
    Scenarios already in that file and not run this time are kept (a Slurm part run apart
    from the local part, say), each with the time it ran."""
    yield RESULTS
    out = os.environ.get("SRLM_CHAOS_RESULTS")
    if not out or not RESULTS:
        return
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    scenarios = {}
    if Path(out).exists():
        scenarios = {r["scenario"]: r for r in json.loads(Path(out).read_text()).get("scenarios", [])}
    for r in RESULTS:
        scenarios[r["scenario"]] = dict(r, when=now, full=FULL)
    rows = list(scenarios.values())
    faults: dict[str, int] = {}
    for r in rows:
        for k, n in r["faults"].items():
            faults[k] = faults.get(k, 0) + n
    summary = {"command": "make chaos (SRLM_CHAOS=1 SRLM_CHAOS_RESULTS=bench/results/chaos.json pytest tests/chaos); "
                          "a run of some scenarios (pytest -k) replaces their rows and keeps the others, each row "
                          "with the time it ran ('when')", "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
               "faults": faults, "records_lost": sum(r["records_lost"] for r in rows),
               "records_duplicated": sum(r["records_duplicated"] for r in rows),
               "outputs_differing": sum(r["outputs_differing"] for r in rows),
               "seconds": round(sum(r["seconds"] for r in rows), 1), "scenarios": rows}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(summary, indent=2) + "\n")
