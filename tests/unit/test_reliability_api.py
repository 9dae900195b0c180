"""Issue 13 (reliability), the Python side: integral options, plan-time launch limits, the build's
cancel flag, and saving a kernel's files atomically with one-line errors."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

import sparsert
from sparsert.backends.cuda.limits import MAX_GRID, MAX_INDEX, launch_problem
from sparsert.errors import InputError, OptionsError, SparsertError
from sparsert.options import KernelOptions
from sparsert.runtime.files import check_out_dir, write_files
from sparsert.toolchain import process


def test_integral_numbers_of_any_type_are_accepted_and_others_refused():
    o = KernelOptions(n=np.int64(64), vec=np.int32(2), groups=np.uint8(2), max_nnz=np.int64(10))
    assert (o.n, o.vec, o.groups, o.max_nnz) == (64, 2, 2, 10) and type(o.n) is int
    for bad in (64.0, "64", True, np.float32(64), -1):
        with pytest.raises(OptionsError, match="n="):
            KernelOptions(n=bad)


def _fake(**kw):
    s = dict(n=64, tile_n=32, batch=1, blocks=(None,), k=256, m=64, conv=None, batch_stride_b=0, batch_stride_c=0)
    s.update(kw)
    s["grid_n"] = -(-s["n"] // s["tile_n"])
    return SimpleNamespace(**s)


def test_launch_limits_name_n_or_batch_and_the_limit():
    assert launch_problem(_fake()) is None
    edge = MAX_GRID[1] * 32
    assert launch_problem(_fake(n=edge)) is None
    msg = launch_problem(_fake(n=edge + 1))
    assert f"n={edge + 1}" in msg and "65,535" in msg
    assert "batch=70000" in launch_problem(_fake(batch=70000, batch_stride_b=10, batch_stride_c=10))
    # 32-bit element offsets: K x N past 2^31 - 1 is refused, just below is not
    k = 4096
    n_ok = MAX_INDEX // k // 32 * 32
    assert launch_problem(_fake(n=n_ok, k=k, tile_n=64 * 32)) is None
    msg = launch_problem(_fake(n=n_ok + 64, k=k, tile_n=64 * 32))
    assert msg and "B spans" in msg and "2^31 - 1" in msg
    # batch offsets: (batch - 1) * stride past the limit
    msg = launch_problem(_fake(batch=3000, batch_stride_b=256 * 4096, batch_stride_c=64 * 4096, n=4096))
    assert msg and "batch=3000" in msg


@pytest.mark.ptxas
def test_compile_refuses_n_past_the_grid_at_plan_time():
    w = sp.random(64, 256, density=0.1, format="csr", random_state=0, dtype=np.float32)
    with pytest.raises(OptionsError, match=r"n=2097153: .* 65,535"):
        sparsert.compile(w, n=2097153, arch="sm_90", use_cache=False)
    with pytest.raises(OptionsError, match="above the limit of 100"):
        sparsert.compile(w, n=64, options=KernelOptions(n=64, max_nnz=100), use_cache=False)


def test_cancel_stops_new_tools_inside_a_build_and_is_cleared_after_it():
    cmd = [sys.executable, "-c", "pass"]
    with pytest.raises(KeyboardInterrupt):
        with process.cancelling():
            process.cancel()
            with pytest.raises(process.Cancelled):
                process.run(cmd, name="python", what="test", timeout=30)
            raise KeyboardInterrupt
    assert not process.cancelled()
    assert process.run(cmd, name="python", what="test", timeout=30).returncode == 0


def test_an_interrupt_kills_a_running_tool_group():
    with process.cancelling():
        import threading
        threading.Timer(0.5, process.cancel).start()
        with pytest.raises(process.Cancelled):
            process.run(["sh", "-c", "sleep 30 & sleep 30"], name="sh", what="sleep", timeout=60)
    assert not process.cancelled()
    left = subprocess.run(["pgrep", "-f", "sleep 30 & sleep 30"], capture_output=True, text=True)
    assert not left.stdout.strip()


def test_save_writes_all_files_or_none_and_names_the_blocked_path(tmp_path):
    (tmp_path / "k.cubin").mkdir()  # one target blocked by a folder
    with pytest.raises(InputError, match="k.cubin is a folder"):
        write_files(tmp_path, [("k.cu", b"src"), ("k.cubin", b"bin"), ("k.json", b"{}")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.cubin"]
    written = write_files(tmp_path / "new", [("k.cu", b"src"), ("k.json", b"{}")])
    assert written["k.cu"].read_bytes() == b"src" and sorted(p.name for p in (tmp_path / "new").iterdir()) == [
        "k.cu", "k.json"]
    (tmp_path / "f").write_text("x")
    for bad, why in ((tmp_path / "f", "is a file"), (tmp_path / "f" / "sub", "below")):
        with pytest.raises(SparsertError, match=why):
            check_out_dir(bad)
