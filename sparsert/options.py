"""Compile options: a frozen, hashable dataclass validated once, at construction."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from .errors import OptionsError

TARGETS = ("cuda", "hip")
VECTOR_WIDTHS = (1, 2, 4)
MAX_PREFETCH = 64
_ARCH_RE = re.compile(r"^sm_\d{2,3}[af]?$")
_HIP_ARCH_RE = re.compile(r"^gfx[0-9a-f]{3,5}$")


@dataclass(frozen=True)
class KernelOptions:
    """What the user chooses. `None` schedule fields mean "pick for me" (see plan.choose_parameters)."""

    n: int
    """Columns of B and C (the batch/token/pixel dimension) the kernel is specialised to."""
    target: str = "cuda"
    arch: str | None = None
    """'sm_90' etc. for CUDA, 'gfx90a' etc. for HIP; None: the current device, else the configured default."""
    relu: bool = False
    residual: bool = False
    """Add a residual tensor R (same shape as C) before the ReLU: relu(A@B + bias + R)."""
    threads_x: int | None = None
    """Threads along N per thread group (one warp is 32)."""
    vec: int | None = None
    """Consecutive columns of N per thread, loaded as one vector (1, 2 or 4)."""
    groups: int | None = None
    """Gy: thread groups that split K inside a block; their partial sums meet in shared memory."""
    rows_per_block: int | None = None
    """Rows of A (outputs) per block; each thread keeps rows_per_block * vec accumulators."""
    max_slab_nnz: int | None = None
    """Slab budget: nonzeros x vec (FFMAs) per slab (one launched kernel) above which the kernel is
    split (None: SPARSERT_MAX_SLAB_NNZ, else the backend's default, config.slab_budget)."""
    prefetch: int | None = None
    """Rows of B each thread loads ahead of their first use (software pipelining in the PTX
    backend: prefetch * vec registers). None: 16 // vec."""

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n <= 0:
            raise OptionsError(f"n={self.n!r}: expected a positive integer (columns of B)")
        if self.target not in TARGETS:
            raise OptionsError(f"target={self.target!r}: expected one of {', '.join(TARGETS)}")
        if self.arch is not None:
            pattern = _ARCH_RE if self.target == "cuda" else _HIP_ARCH_RE
            if not pattern.match(self.arch):
                example = "sm_80, sm_90" if self.target == "cuda" else "gfx90a, gfx942"
                raise OptionsError(f"arch={self.arch!r}: not a {self.target} architecture (e.g. {example})")
        _positive("threads_x", self.threads_x, upper=1024)
        _positive("groups", self.groups, upper=32)
        _positive("rows_per_block", self.rows_per_block, upper=256)
        _positive("max_slab_nnz", self.max_slab_nnz)
        _positive("prefetch", self.prefetch, upper=MAX_PREFETCH)
        if self.vec is not None and self.vec not in VECTOR_WIDTHS:
            raise OptionsError(f"vec={self.vec!r}: expected one of {VECTOR_WIDTHS}")
        if self.vec is not None and self.n % self.vec:
            raise OptionsError(f"vec={self.vec} does not divide n={self.n}: vector loads need n % vec == 0")
        if self.threads_x is not None and self.groups is not None and self.threads_x * self.groups > 1024:
            raise OptionsError(
                f"threads_x * groups = {self.threads_x * self.groups}: a block has at most 1024 threads"
            )

    def as_dict(self) -> dict:
        return asdict(self)


def _positive(name: str, value, upper: int | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise OptionsError(f"{name}={value!r}: expected a positive integer")
    if upper is not None and value > upper:
        raise OptionsError(f"{name}={value}: expected at most {upper}")
