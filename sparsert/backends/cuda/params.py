"""The CUDA backend's parameter choice: schedule defaults within the hardware limits, and the
register cap each PTX object is assembled under. (HIP compiles the same source and uses the
same choice.)"""

from __future__ import annotations

import math

from ...errors import OptionsError
from ...ir.plan import Parameters
from ...ir.schedule import Schedule
from ...options import KernelOptions
from .limits import (
    MAX_REGISTERS_PER_THREAD,
    MAX_THREADS_PER_BLOCK,
    REGISTER_FILE,
    SHARED_MEMORY_BYTES,
)

ACCUMULATOR_BUDGET = 64  # rows_per_block * vec: registers of accumulators per thread
# Registers holding rows of B loaded ahead of use (prefetch * vec). 16 rows at vec 1 put the load
# ~100 instructions before its first FFMA at 90% sparsity (checked on the SASS in the tests).
PREFETCH_REGISTERS = 16
# Warps a launch should have before thread groups stop being worth their reduction: ~8 resident
# warps per SM on a 132-SM H100/H200.
TARGET_WARPS = 1024
GROUP_MIN_NNZ = 128  # nonzeros per thread group, at least


def choose_parameters(m: int, k: int, nnz: int, opts: KernelOptions, *, batch: int = 1
                      ) -> tuple[int, int, int, int]:
    """Defaults for (threads_x, vec, groups, rows_per_block); explicit options win.

    One column per thread (vec 1) and 64 rows per block by default, as in SparseRT: rows, not vec,
    decide how often a loaded value of B is reused (rows_per_block x density FFMAs per load), and
    vec multiplies the unrolled code (nonzeros x vec FFMAs), hence compile time and instruction
    cache footprint, for the same work. A 64-accumulator budget bought as 16 rows x vec 4 reuses B
    a quarter as often as 64 rows x vec 1 (benchmarks/COMPILE_TIME.md).

    Thread groups (split K) shorten each thread's chain of FFMAs but cost a shared-memory
    reduction of up to 3 x rows_per_block instructions per thread. They pay off only when the
    grid alone cannot fill the GPU: groups are added until the launch has about TARGET_WARPS warps,
    at most 4, and only while each group keeps >= GROUP_MIN_NNZ nonzeros.
    """
    n = opts.n
    # Half activations: two columns per load by default (a 4-byte load of two halves), where n
    # allows; packed half arithmetic needs them (one HFMA2 per two columns).
    half = opts.dtype != "float32" and n % 2 == 0
    vec = opts.vec or (2 if half else 1)
    # Packed half keeps two columns per accumulator register.
    lanes = 2 if opts.packed else 1
    threads_x = opts.threads_x or min(32, 1 << max(0, math.ceil(math.log2(-(-n // vec)))))
    rows = opts.rows_per_block or max(1, min(m, ACCUMULATOR_BUDGET * lanes // vec))
    red_bytes = 4 // lanes  # bytes of partial sum per column in shared memory
    if opts.groups:
        groups = opts.groups
    else:
        n_blocks = -(-m // rows)
        per_block = nnz / max(1, n_blocks)
        ctas = n_blocks * -(-n // (threads_x * vec)) * max(1, batch)
        warps_per_group = threads_x / 32
        wanted = math.ceil(TARGET_WARPS / (ctas * warps_per_group))
        groups = int(max(1, min(4, wanted, per_block // GROUP_MIN_NNZ, k)))
        while groups > 1 and groups * rows * threads_x * vec * red_bytes > SHARED_MEMORY_BYTES:
            groups -= 1
    if threads_x * groups > MAX_THREADS_PER_BLOCK:
        raise OptionsError(f"threads_x * groups = {threads_x * groups}: a block has at most "
                           f"{MAX_THREADS_PER_BLOCK} threads")
    if groups > 1 and groups * rows * threads_x * vec * red_bytes > SHARED_MEMORY_BYTES:
        raise OptionsError(
            f"groups={groups} x rows_per_block={rows} x threads_x={threads_x} x vec={vec} {red_bytes}-byte "
            f"partial sums exceed {SHARED_MEMORY_BYTES // 1024} KiB of shared memory; lower one of them"
        )
    return threads_x, vec, groups, rows


def choose_prefetch(vec: int, opts: KernelOptions) -> int:
    """Rows of B in flight per thread: PREFETCH_REGISTERS // vec registers' worth by default."""
    return opts.prefetch or max(1, PREFETCH_REGISTERS // vec)

def parameters(m: int, k: int, nnz: int, opts: KernelOptions, *, batch: int = 1) -> Parameters:
    """Backend.parameters for CUDA and HIP: (threads_x, vec, groups, rows_per_block, prefetch)."""
    threads_x, vec, groups, rows = choose_parameters(m, k, nnz, opts, batch=batch)
    return Parameters(threads_x, vec, groups, rows, choose_prefetch(vec, opts))


# Registers beyond accumulators and rows of B in flight: pointers, indices, predicates (measured
# on the whole-kernel layout: 16 at vec 1, 22-29 at vec 2, 34-40 at vec 4); a clamped im2col tap adds
# its pointer and mask (0-4 measured, 3 typical).
_BASE_REGISTERS = {1: 16, 2: 24, 4: 36}
_TAP_REGISTERS = 3
# Few FMAs per row of B loaded (about rows x density: 3.2 at 95% sparse and 64 rows, 6.4 at 90%)
# and the function layout needs more: 85 of the 96 DLMC Transformer layers at 95% spilled at 96
# registers and fit at 126 (benchmarks/results/history/compile_time-dlmc-first-cap-96.jsonl.gz), where 10 of 96
# at 90% did. Below this ratio the first cap starts one step up.
_SPARSE_PIPELINE_FMAS = 5.0
_SPARSE_PIPELINE_REGISTERS = 8


def register_cap(s: Schedule, *, at_least: int = 0) -> int:
    """The entry's `.maxnreg`. In whole-program mode ptxas sizes a lone kernel by itself, but a
    kernel that calls functions may take up to 255 (measured during development: 149 where the
    lone kernel of the default schedule used 96), which would cut occupancy. The cap is the schedule's estimated need
    (at least `at_least`), raised to the most registers that keep the same number of resident
    blocks per SM: headroom that costs no occupancy."""
    v = s.vec
    lanes = 2 if s.packed else 1  # packed half: two columns per register (accumulators and B)
    half_b = 2 if s.dtype != "float32" else 1  # half B rows in flight: two columns per register
    need = s.rows_per_block * v // lanes + max(1, s.prefetch * v // half_b) + _BASE_REGISTERS[v]
    if s.fmas_per_load < _SPARSE_PIPELINE_FMAS:
        need += _SPARSE_PIPELINE_REGISTERS
    if s.conv is not None:
        rows_ok, cols_ok = s.conv.tap_rows_always_valid(), s.conv.tap_cols_always_valid()
        need += _TAP_REGISTERS * sum(not (r and c) for r in rows_ok for c in cols_ok)
    need = -(-max(need, at_least) // 8) * 8  # allocated per thread in steps of 8
    warps = -(-s.threads_x * s.groups // 32)
    blocks = REGISTER_FILE // (need * 32 * warps)
    if blocks == 0 or need >= MAX_REGISTERS_PER_THREAD:
        return MAX_REGISTERS_PER_THREAD
    return min(MAX_REGISTERS_PER_THREAD, max(need, REGISTER_FILE // (blocks * 32 * warps) // 8 * 8))
