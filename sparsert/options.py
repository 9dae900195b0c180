"""Compile options: a frozen, hashable dataclass validated once, at construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .choices import MAX_PREFETCH, VECTOR_WIDTHS, check_arch, check_dtype, check_target
from .errors import OptionsError


@dataclass(frozen=True)
class KernelOptions:
    """What the user chooses. `None` schedule fields mean "pick for me" (the backend's parameters())."""

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
    split (None: SPARSERT_MAX_SLAB_NNZ, else the backend's default, Backend.slab_budget)."""
    prefetch: int | None = None
    """Rows of B each thread loads ahead of their first use (software pipelining in the PTX
    backend: prefetch * vec registers). None: 16 // vec."""
    dtype: str = "float32"
    """Element type of B, C, bias and residual: 'float32', 'float16' or 'bfloat16'."""
    accumulate: str | None = None
    """Arithmetic: None or 'float32' (fp32 FFMA with fp32 weights, one rounding at the store), or
    'float16' / 'bfloat16' (= dtype): packed half HFMA2, two columns per instruction, weights
    rounded to that precision (needs an even vec and n)."""

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n <= 0:
            raise OptionsError(f"n={self.n!r}: expected a positive integer (columns of B)")
        check_target(self.target)
        if self.arch is not None:
            check_arch(self.target, self.arch)
        _positive("threads_x", self.threads_x, upper=1024)
        _positive("groups", self.groups, upper=32)
        _positive("rows_per_block", self.rows_per_block, upper=256)
        _positive("max_slab_nnz", self.max_slab_nnz)
        _positive("prefetch", self.prefetch, upper=MAX_PREFETCH)
        if self.vec is not None and self.vec not in VECTOR_WIDTHS:
            raise OptionsError(f"vec={self.vec!r}: expected one of {VECTOR_WIDTHS}")
        if self.vec is not None and self.n % self.vec:
            raise OptionsError(f"vec={self.vec} does not divide n={self.n}: vector loads need n % vec == 0")
        check_dtype(self.dtype, self.accumulate)
        if self.packed and self.vec is not None and self.vec % 2:
            raise OptionsError(f"vec={self.vec}: accumulate={self.accumulate!r} packs two columns per "
                               f"instruction; use vec=2 or 4")
        if self.packed and self.n % 2:
            raise OptionsError(f"n={self.n}: accumulate={self.accumulate!r} packs two columns per "
                               f"instruction and needs an even n; use accumulate='float32'")
        if self.threads_x is not None and self.groups is not None and self.threads_x * self.groups > 1024:
            raise OptionsError(
                f"threads_x * groups = {self.threads_x * self.groups}: a block has at most 1024 threads"
            )

    @property
    def packed(self) -> bool:
        """Packed half arithmetic (HFMA2, two columns per instruction)."""
        return self.accumulate not in (None, "float32")

    def as_dict(self) -> dict:
        return asdict(self)


def _positive(name: str, value, upper: int | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise OptionsError(f"{name}={value!r}: expected a positive integer")
    if upper is not None and value > upper:
        raise OptionsError(f"{name}={value}: expected at most {upper}")
