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
