"""Shared set-up: the repository root on sys.path (the tests import modules by name, ``import losses``),
and one torch thread for the in-process runs (tiny runs are faster on one thread, and fair to a busy machine)."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from cli_util import one_torch_thread  # noqa: E402  (after the path is set)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    with one_torch_thread():
        yield


# The modules that take longest (each a few real runs through subprocess), slowest first. pytest.ini
# hands whole modules to the two workers in collection order (--no-loadscope-reorder): the long ones go
# out first and the many short ones fill the gaps, so neither worker is left with a long module at the
# end. A module missing from this list only runs later; nothing else depends on the order.
SLOWEST_FIRST = ("test_cluster", "test_tool_safety", "test_data_safety", "test_benchmark", "test_signals",
                 "test_cli", "test_contributing", "test_tools", "test_compile", "test_golden", "test_resume_safety",
                 "test_validation")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.module.__name__ if item.module else ""
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: each module's tests keep their order
