"""Compile options: a frozen, hashable dataclass validated once, at construction."""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, fields

from .choices import (
    CPU_BROADCASTS,
    CPU_VECTORS,
    MAX_PREFETCH,
    VECTOR_WIDTHS,
    check_arch,
    check_dtype,
    check_target,
)
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
    'float16' / 'bfloat16' (= dtype): packed half arithmetic with the weights rounded to that
    precision. GPUs: HFMA2, two columns per instruction (needs an even vec and n). The CPU target
    (bfloat16 only, arch='avx512' on a CPU with AVX512-BF16): vdpbf16ps, two rows of K per
    instruction into float32 accumulators."""
    max_nnz: int | None = None
    """Refuse (OptionsError, before planning) a weight with more nonzeros than this (None:
    SPARSERT_MAX_NNZ, default 16,777,216): an unrolled kernel that big takes an hour or more to
    assemble. Raise it to compile one anyway."""
    chunk: int | None = None
    """CPU only, run time: columns of N per work item (the packed panel of B each block's code
    sweeps), a multiple of the tile width (vec x 8 or 16 lanes; checked when planned). None: the
    launcher's choice (a 256 KiB panel, at least 16 tiles, cut finer when threads lack work).
    Not part of the generated code: kernels differing only in chunk share one cache entry."""
    bcast: str | None = None
    """CPU, AVX-512 only: 'embedded' (weights as {1to16} memory operands of the FMAs) or
    'register' (vbroadcastss + register FMAs, one row fewer at most); None: the backend's default."""

    def __post_init__(self) -> None:
        for name in _INTEGRAL:  # any integral number (np.int64, ...): operator.index, not isinstance
            value = getattr(self, name)
            if value is not None and not isinstance(value, (int, bool)):
                try:
                    object.__setattr__(self, name, operator.index(value))
                except TypeError:
                    pass  # refused below, naming the argument
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n <= 0:
            raise OptionsError(f"n={self.n!r}: expected a positive integer (columns of B)")
        check_target(self.target)
        if self.arch is not None:
            check_arch(self.target, self.arch)
        _positive("threads_x", self.threads_x, upper=1024)
        _positive("groups", self.groups, upper=32)
        _positive("rows_per_block", self.rows_per_block, upper=256)
        _positive("max_slab_nnz", self.max_slab_nnz)
        _positive("max_nnz", self.max_nnz)
        _positive("chunk", self.chunk)
        if self.chunk is not None and self.target != "cpu":
            raise OptionsError(f"chunk={self.chunk}: a CPU option (columns of N per work item); "
                               f"target={self.target!r}")
        if self.bcast is not None:
            if self.bcast not in CPU_BROADCASTS:
                raise OptionsError(f"bcast={self.bcast!r}: expected one of {CPU_BROADCASTS}")
            if self.target != "cpu" or self.arch not in (None, "avx512"):
                raise OptionsError(f"bcast={self.bcast!r}: an AVX-512 option of the CPU target; "
                                   f"target={self.target!r}, arch={self.arch!r}")
        _positive("prefetch", self.prefetch, upper=MAX_PREFETCH)
        widths = CPU_VECTORS if self.target == "cpu" else VECTOR_WIDTHS
        if self.vec is not None and self.vec not in widths:
            raise OptionsError(f"vec={self.vec!r}: expected one of {widths}")
        if self.vec is not None and self.n % self.vec and self.target != "cpu":  # the CPU masks its tails
            raise OptionsError(f"vec={self.vec} does not divide n={self.n}: vector loads need n % vec == 0")
        check_dtype(self.dtype, self.accumulate)
        # packed half on a GPU pairs columns of N (HFMA2); the CPU's vdpbf16ps pairs rows of K
        gpu_packed = self.packed and self.target != "cpu"
        if gpu_packed and self.vec is not None and self.vec % 2:
            raise OptionsError(f"vec={self.vec}: accumulate={self.accumulate!r} packs two columns per "
                               f"instruction; use vec=2 or 4")
        if gpu_packed and self.n % 2:
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


_INTEGRAL = ("n", "threads_x", "vec", "groups", "rows_per_block", "max_slab_nnz", "prefetch", "max_nnz",
             "chunk")
assert set(_INTEGRAL) <= {f.name for f in fields(KernelOptions)}


def _positive(name: str, value, upper: int | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise OptionsError(f"{name}={value!r}: expected a positive integer")
    if upper is not None and value > upper:
        raise OptionsError(f"{name}={value}: expected at most {upper}")
