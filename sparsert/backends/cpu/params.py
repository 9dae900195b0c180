"""The CPU target's parameter choice: register blocks of R rows x V vectors of N (explicit options
win: rows_per_block = R, vec = V), and the emitter's configuration."""

from __future__ import annotations

from ...errors import OptionsError
from ...ir.plan import Parameters
from ...options import KernelOptions
from .x86 import EmitConfig, max_rows

# Consecutive blocks per function while their FMAs fit: ~20 bytes of code per nonzero, so ~22
# KiB, inside a 32 KiB L1I, while the tile of B they share stays in L1D. Measured on Zen 4
# (staging benchmark): +12-16% at 95% sparsity (blocks of ~360 nonzeros, 3 per function),
# neutral at 90%, worse at 2200.
GROUP_FMAS = 1100
# V = 1 with the most rows won on Zen 4 (AVX2, 1 thread, same process, interleaved): 39 / 33.5 /
# 26.5 GFLOP/s at V = 1 / 2 / 3 on 512x512x784 at 90%: rows, not V, decide how many FMAs each
# load of B feeds. AVX-512 (not runnable on the development machine, so not measured): the same
# reasoning, V = 1 with 31 rows and embedded-broadcast FMAs.
DEFAULT_V = 1
DEFAULT_BCAST = "embedded"  # AVX-512 (AVX2 always broadcasts into a register)


def emit_config(isa: str, opts_rows: int | None, opts_vec: int | None, n: int,
                bcast: str | None = None, dtype: str = "float32", pairs: bool = False) -> EmitConfig:
    if bcast is not None and isa != "avx512":
        raise OptionsError(f"bcast={bcast!r}: an AVX-512 choice; this kernel is {isa} code")
    v = opts_vec or DEFAULT_V
    bcast = bcast or DEFAULT_BCAST
    rows = opts_rows or max_rows(isa, v, bcast)
    cfg = EmitConfig(isa=isa, v=v, rows=rows, bcast=bcast, group_fmas=GROUP_FMAS, ldc=n, dtype=dtype, pairs=pairs)
    cfg.check()
    return cfg


def parameters_for(isa: str):
    """Backend.parameters for one ISA: threads_x and groups are GPU notions (1 here), vec is V,
    rows_per_block is R (the register block)."""

    def parameters(m: int, k: int, nnz: int, opts: KernelOptions, *, batch: int = 1) -> Parameters:
        for name in ("threads_x", "groups", "prefetch"):
            value = getattr(opts, name)
            if value not in (None, 1):
                raise OptionsError(f"{name}={value}: a GPU schedule option; the CPU target plans register "
                                   f"blocks (rows_per_block = rows, vec = vectors of N)")
        cfg = emit_config(isa, opts.rows_per_block, opts.vec, opts.n, opts.bcast, opts.dtype, opts.packed)
        if opts.chunk is not None and opts.chunk % cfg.width:
            raise OptionsError(f"chunk={opts.chunk}: columns of N per work item must be a multiple of "
                               f"the tile width {cfg.width} (vec={cfg.v} x {cfg.lanes} lanes)")
        return Parameters(threads_x=1, vec=cfg.v, groups=1, rows_per_block=cfg.rows, prefetch=1)

    return parameters
