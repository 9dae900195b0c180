"""Multi-slab launch order without a GPU: a fake `cupy` records what a kernel's CudaLauncher enqueues.

The slabs of one kernel write disjoint rows of C, so they are spread over several streams forked
from the caller's stream. What must hold: every slab is launched exactly once; no slab starts on a
side stream before that stream waited for the caller's stream (the fork); the caller's stream
waits for every side stream it used (the join) before anything later is enqueued on it; and the
events can be reused by the next call.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp

from sparsert.backends.cuda import BACKENDS
from sparsert.backends.cuda.launch import SLAB_LANES, CudaLauncher
from sparsert.runtime.kernel import SparseKernel
from sparsert.options import KernelOptions
from sparsert.backends.cuda import plan  # ir.plan.plan with the CUDA parameter choice
from sparsert.backends.source.render import render
from sparsert.frontend.weights import load_weight


class _Log(list):
    pass


def _fake_cupy(log: _Log):
    class Stream:
        count = 0

        def __init__(self, non_blocking=False):
            Stream.count += 1
            self.name = f"side{Stream.count}"
            assert non_blocking, "side streams must not synchronise with the legacy default stream"

        def wait_event(self, event):
            log.append(("wait", self.name, event.name, event.recorded_on))

    class Event:
        count = 0

        def __init__(self, disable_timing=False):
            Event.count += 1
            self.name = f"ev{Event.count}"
            self.recorded_on = None

        def record(self, stream):
            self.recorded_on = stream.name
            log.append(("record", self.name, stream.name))

    cuda = types.SimpleNamespace(Stream=Stream, Event=Event)
    return types.SimpleNamespace(cuda=cuda)


class _Caller:
    name = "caller"

    def __init__(self, log: _Log):
        self.log = log

    def wait_event(self, event):
        self.log.append(("wait", "caller", event.name, event.recorded_on))


def _kernel(slabs_wanted: int) -> SparseKernel:
    a = sp.random(64, 48, density=0.25, random_state=3, format="csr", dtype=np.float32)
    w = load_weight(a)
    s = plan(w.matrix, KernelOptions(n=32, rows_per_block=2, groups=1), weight_digest=w.digest(),
             max_slab_nnz=max(1, w.matrix.nnz // slabs_wanted))
    units = render(s)
    return SparseKernel(schedule=s, units=units, artifacts=[], target="cuda", arch="sm_90",
                        name="t", stats=None, backend=BACKENDS["nvrtc"])


def _launchers(k: SparseKernel, log: _Log):
    def make(i):
        def fn(grid, block, args, stream):
            assert grid == k.units[i].grid and block == k.units[i].block
            log.append(("launch", i, stream.name))
        return fn
    return [make(i) for i in range(len(k.units))]


def _check_order(log: _Log, slabs: int) -> None:
    launches = [e for e in log if e[0] == "launch"]
    assert sorted(e[1] for e in launches) == list(range(slabs))  # each slab exactly once
    lanes = {e[2] for e in launches}
    assert len(lanes) == min(SLAB_LANES, slabs)
    fork = next(e for e in log if e[0] == "record" and e[2] == "caller")
    for lane in lanes - {"caller"}:
        waited = next(i for i, e in enumerate(log) if e[:2] == ("wait", lane))
        assert log[waited][3] == "caller" and log[waited][2] == fork[1]  # waits on the fork event
        first = next(i for i, e in enumerate(log) if e[0] == "launch" and e[2] == lane)
        assert waited < first
        recorded = max(i for i, e in enumerate(log) if e[0] == "record" and e[2] == lane)
        last = max(i for i, e in enumerate(log) if e[0] == "launch" and e[2] == lane)
        assert recorded > last  # the join event comes after the lane's last slab
        joined = [i for i, e in enumerate(log) if e[:2] == ("wait", "caller") and e[3] == lane]
        assert joined and joined[-1] > recorded


@pytest.mark.parametrize("slabs", [3, 12])
def test_slabs_fork_and_join_the_callers_stream(monkeypatch, slabs):
    log = _Log()
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(log))
    k = _kernel(slabs)
    assert len(k.units) >= slabs  # the budget cut it into (at least) that many slabs
    fns = _launchers(k, log)
    caller = _Caller(log)
    launcher = BACKENDS["nvrtc"].launcher(k)  # what k(B) launches through
    assert isinstance(launcher, CudaLauncher)
    launcher._launch_units(fns, (), caller, device_id=0)
    _check_order(log, len(k.units))
    # a second call reuses the streams and events, with the same guarantees
    first_call = len(log)
    launcher._launch_units(fns, (), caller, device_id=0)
    second = _Log(log[first_call:])
    _check_order(second, len(k.units))
    assert not any(e[0] == "record" and e[1] not in {x[1] for x in log[:first_call] if x[0] == "record"}
                   for e in second)  # no new events


def test_single_slab_launches_once_on_the_callers_stream(monkeypatch):
    log = _Log()
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(log))
    k = _kernel(1)
    k.units = k.units[:1]
    CudaLauncher(k)._launch_units(_launchers(k, log), (), _Caller(log), device_id=0)
    assert log == [("launch", 0, "caller")]


def test_biggest_slabs_go_first(monkeypatch):
    log = _Log()
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(log))
    k = _kernel(12)
    CudaLauncher(k)._launch_units(_launchers(k, log), (), _Caller(log), device_id=0)
    sizes = [k.units[e[1]].nnz for e in log if e[0] == "launch"]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) > 1
