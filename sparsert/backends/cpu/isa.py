"""Run-time choice of the x86 vector ISA the emitted code targets.

Linux clears a feature flag in /proc/cpuinfo when the kernel does not enable its register state
(XCR0), so the flags there already mean "usable", unlike raw CPUID (under KVM here CPUID may show
AVX-512 bits that XCR0 masks; cpuinfo does not).
"""

from __future__ import annotations

from functools import lru_cache

from ...choices import CPU_ISAS as ISAS
from ...config import settings
from ...errors import OptionsError, ToolchainError

# Only what the emitter uses: zmm + k-masks + embedded broadcast (F); masked ymm never (VL/BW not
# needed because every vector op is 512-bit).
REQUIRED = {"avx512": ("avx512f",), "avx2": ("avx2", "fma")}


@lru_cache(maxsize=4)
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def supported(flags: frozenset[str] | None = None) -> tuple[str, ...]:
    flags = cpu_flags() if flags is None else flags
    return tuple(i for i in ISAS if all(f in flags for f in REQUIRED[i]))


def detect_isa(isa: str | None = None, *, flags: frozenset[str] | None = None) -> str:
    """The ISA to emit: `isa`, else $SPARSERT_CPU_ISA, else the best one this CPU runs.

    An explicit choice is honoured even when this CPU cannot run it (to assemble code for
    another machine); `runnable()` says whether it can be executed here.
    """
    choice = isa or settings().cpu_isa
    if choice is not None:
        if choice not in ISAS:
            raise OptionsError(f"arch={choice!r}: not a cpu architecture (expected one of {', '.join(ISAS)})")
        return choice
    found = supported(flags)
    if not found:
        raise ToolchainError("this CPU has neither AVX-512F nor AVX2+FMA (per /proc/cpuinfo flags); "
                       "the CPU backend needs at least AVX2+FMA")
    return found[0]


def runnable(isa: str, flags: frozenset[str] | None = None) -> bool:
    return isa in supported(flags)


def has_avx512_bf16(flags: frozenset[str] | None = None) -> bool:
    """vdpbf16ps on zmm (accumulate='bfloat16' kernels): AVX512-BF16 on top of AVX-512F."""
    flags = cpu_flags() if flags is None else flags
    return runnable("avx512", flags) and "avx512_bf16" in flags
