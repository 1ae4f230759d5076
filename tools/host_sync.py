"""Count the calls that make the host wait for the device (on a GPU: a pipeline stall each): ``count_host_syncs``
on any device, the CPU included, so that a CPU test can hold a step to its count; ``count_cuda_syncs`` as the
CUDA runtime reports them.

    with count_host_syncs() as syncs:
        step()
    syncs.total, syncs.calls  # e.g. 3, Counter({'aten.nonzero.default': 3})
"""

import collections
import contextlib
import warnings
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
# Operators whose result (or whose output's size) must come back to the host.
ALWAYS_SYNC = {
    aten._local_scalar_dense.default,  # .item(), bool(t), int(t), float(t)
    aten.nonzero.default, aten.masked_select.default, aten.equal.default,
    aten._unique2.default, aten.unique_consecutive.default, aten.unique_dim.default,
    aten.repeat_interleave.Tensor,  # its output size is a sum of the input
}
# Indexing operators: a sync only when an index is a boolean mask (it becomes nonzero).
MASK_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
COPIES = {aten._to_copy.default, aten.copy_.default}
# Read-backs that reach no operator when the tensor is already on the CPU; on a GPU each is a device-to-host copy.
READ_BACK_METHODS = ("cpu", "tolist")


def _to_host(func, args, kwargs):
    """A copy from a device other than the CPU into the CPU (aten._to_copy or aten.copy_)."""
    src, dst = (args[0], kwargs.get("device")) if func is aten._to_copy.default else (args[1], args[0].device)
    return dst is not None and torch.device(dst).type == "cpu" and src.device.type != "cpu"


class HostSyncCounter(TorchDispatchMode):
    """Counts the operators that wait for the device: ``calls`` by name, ``total`` their sum."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    @property
    def total(self):
        return sum(self.calls.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in ALWAYS_SYNC:
            self.calls[str(func)] += 1
        elif func in MASK_INDEXED and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                                          for i in args[1]):
            self.calls[str(func) + " (boolean mask)"] += 1
        elif func in COPIES and _to_host(func, args, kwargs):
            self.calls[str(func) + " (to the CPU)"] += 1
        return func(*args, **kwargs)


def _counting(method, name, counter):
    def wrapper(self, *args, **kwargs):
        # Free on the CPU, where they reach no operator: they count for the copy the same call is on a GPU
        # (off the CPU the dispatch mode sees that copy itself).
        if self.device.type == "cpu":
            counter.calls[f"Tensor.{name}"] += 1
        return method(self, *args, **kwargs)

    return wrapper


@contextlib.contextmanager
def count_host_syncs():
    """Count, inside the block, the calls that would make the host wait for a GPU. Yields a HostSyncCounter."""
    counter = HostSyncCounter()
    methods = {name: _counting(getattr(torch.Tensor, name), name, counter) for name in READ_BACK_METHODS}
    with mock.patch.multiple(torch.Tensor, **methods), counter:
        yield counter


@contextlib.contextmanager
def count_cuda_syncs():
    """Yields a list that holds, once the block ends, one entry per synchronising CUDA call the runtime reported."""
    found, previous = [], torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every sync, not the first per line
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    found.extend(w for w in caught if "synchronizing CUDA operation" in str(w.message))
