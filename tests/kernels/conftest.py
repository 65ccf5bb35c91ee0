"""Fresh random inputs for the kernel tests, reproducible on demand.

Each run draws a new base seed from os.urandom; each test seeds torch with
crc32("<base>:<test id>"), so tests differ from each other and one test rerun alone
gets the same inputs. A failing test's error message ends with the line that
reproduces it, e.g.

    SRLM_TEST_SEED=3141592653 python -m pytest 'tests/kernels/test_logprobs.py::test_x[fp32]'
"""

from __future__ import annotations

import os
import zlib

import pytest
import torch

SEED_ENV = "SRLM_TEST_SEED"
_SEEDS = pytest.StashKey[tuple]()


@pytest.fixture(scope="session")
def base_seed() -> int:
    raw = os.environ.get(SEED_ENV, "").strip()
    if not raw:
        return int.from_bytes(os.urandom(4), "little")
    try:
        return int(raw)
    except ValueError as e:
        raise pytest.UsageError(f"{SEED_ENV}={raw!r} is not an integer: use the value a failing "
                                f"test printed, or unset it for fresh inputs") from e


@pytest.fixture(autouse=True)
def _seed(request, base_seed):
    seed = zlib.crc32(f"{base_seed}:{request.node.nodeid}".encode())
    request.node.stash[_SEEDS] = (base_seed, seed)
    torch.manual_seed(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    except (Exception, pytest.fail.Exception) as e:  # assertions, errors, pytest.raises misses
        if _SEEDS not in item.stash:
            raise
        base, seed = item.stash[_SEEDS]
        note = (f"random inputs: torch.manual_seed({seed}); reproduce with\n"
                f"  {SEED_ENV}={base} python -m pytest '{item.nodeid}'")
        if hasattr(e, "add_note"):  # Python >= 3.11: the note is part of the error message
            e.add_note(note)
        else:
            item.add_report_section("call", "random inputs", note)
        raise
