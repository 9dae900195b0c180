"""Small weights and schedules for the PTX / slab / build tests, and a reference model of the
CUDA template's arithmetic (run against tests/helpers/ptx_sim.py). Shared by every tier."""

from __future__ import annotations

import re

import numpy as np
import ptx_sim
import scipy.sparse as sp

from sparsert.backends.cuda import plan
from sparsert.backends.cuda.ptx_objects import render_ptx
from sparsert.frontend.weights import load_weight
from sparsert.ir.schedule import ConvGeometry
from sparsert.options import KernelOptions

ARCH = "sm_90"


def weight(m: int, k: int, density: float, seed: int):
    rng = np.random.default_rng(seed)
    a = sp.random(m, k, density=density, random_state=rng, dtype=np.float32).toarray()
    a[a != 0] -= 0.5  # both signs
    return load_weight(a)


def schedule(w, *, budget=10**9, bias=None, batch=1, **opts):
    m, k = w.shape
    o = KernelOptions(**({"n": 16} | opts))
    return plan(w.matrix, o, bias=bias, weight_digest=w.digest(), max_slab_nnz=budget, batch=batch,
                batch_stride_b=k * o.n if batch > 1 else 0, batch_stride_c=m * o.n if batch > 1 else 0)


def conv_schedule(geo, m=64, **opts):
    g = ConvGeometry(*geo)
    a = sp.random(m, g.c_in * g.kh * g.kw, density=0.1, random_state=np.random.default_rng(8),
                  dtype=np.float32, format="csr")
    w = load_weight(a)
    return plan(w.matrix, KernelOptions(n=g.oh * g.ow, **opts), weight_digest=w.digest(),
                max_slab_nnz=10**9, conv=g)


def spilling_conv():
    """Many clamped im2col taps (5x5, padding 2) need more registers than the estimate."""
    return conv_schedule((8, 12, 12, 5, 5, (1, 1), (2, 2), (1, 1)), rows_per_block=64, prefetch=16, groups=1)


# -- reference: the CUDA template's arithmetic, operation by operation ------------------------
def reference(s, B: np.ndarray, R: np.ndarray | None) -> np.ndarray:
    """C as the CUDA source computes it: per group, acc = fma(b, w, acc) from +0 in (k, slot)
    order; the slot's owner (slot % groups) adds the other users' partials in group order; then
    + bias, + residual, relu."""
    f32 = np.float32
    C = np.zeros((s.batch, s.m, s.n), dtype=f32)
    for z in range(s.batch):
        for block in s.blocks:
            users = block.slot_users()
            for slot, row in enumerate(block.rows):
                for col in range(s.n):
                    accs = {}
                    for g, work in enumerate(block.groups):
                        acc = f32(0.0)
                        k, sl, bits = work.arrays()
                        for kk, ss, ww in zip(k.tolist(), sl.tolist(), bits.view(f32).tolist()):
                            if ss == slot:
                                acc = ptx_sim.fma32(B[z, kk, col], f32(ww), acc)
                        accs[g] = acc
                    owner = slot % s.groups
                    out = accs[owner]
                    for h in users[slot]:
                        if h != owner:
                            out = ptx_sim.add32(out, accs[h])
                    if s.bias_bits is not None:
                        out = ptx_sim.add32(out, np.array(s.bias_bits[row], np.uint32).view(f32)[()])
                    if s.residual:
                        out = ptx_sim.add32(out, R[z, row, col])
                    if s.relu:
                        out = ptx_sim.max32(out, f32(0.0))
                    C[z, row, col] = out
    return C


def run_ptx(s, B: np.ndarray, R: np.ndarray | None, **linked) -> np.ndarray:
    C = np.full((s.batch, s.m, s.n), np.nan, dtype=np.float32)  # every element must be written
    for u in render_ptx(s, ARCH, **linked):
        ptx_sim.launch(u.source, u.grid, u.block, [B, C] + ([R] if s.residual else []))
    return C


def im2col(x: np.ndarray, g) -> np.ndarray:
    """The virtual im2col matrix of NCHW x, materialised: [batch, c*kh*kw, oh*ow], 0 in the padding."""
    (sy, sx), (py, px), (dy, dx) = g.stride, g.padding, g.dilation
    out = np.zeros((x.shape[0], g.k, g.n), np.float32)
    for c in range(g.c_in):
        for ky in range(g.kh):
            for kx in range(g.kw):
                row = (c * g.kh + ky) * g.kw + kx
                for oy in range(g.oh):
                    for ox in range(g.ow):
                        iy, ix = oy * sy - py + ky * dy, ox * sx - px + kx * dx
                        if 0 <= iy < g.h and 0 <= ix < g.w:
                            out[:, row, oy * g.ow + ox] = x[:, c, iy, ix]
    return out


def resource_usage(cubin: bytes) -> dict[str, int]:
    """cuobjdump -res-usage of the CUBIN's one entry (its callees report 0: nvlink folds them in)."""
    import subprocess
    import tempfile

    from sparsert.toolchain.locate import find_tool

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([find_tool("cuobjdump"), "-res-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    rows = re.findall(r"Function (\w+):\n\s*(.*)", out)
    entries = [dict((k, int(v)) for k, v in re.findall(r"(\w+):(\d+)", fields)) for name, fields in rows
               if not re.search(r"_b\d+(_r\d+)?$", name)]
    assert len(entries) == 1, out
    return entries[0]
