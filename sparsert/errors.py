"""User-facing errors. Each message names the file or argument and what was expected."""


class SparsertError(Exception):
    """Base class: everything sparsert raises on purpose derives from this."""


class WeightError(SparsertError, ValueError):
    """A weight file or array is unreadable, of the wrong rank, or holds NaN/Inf."""


class OptionsError(SparsertError, ValueError):
    """A compile option (N, arch, target, schedule parameter, ...) is out of range."""


class InputError(SparsertError, ValueError):
    """A run-time argument (B, out=, residual) has the wrong shape, dtype, device or layout."""


class ToolchainError(SparsertError, RuntimeError):
    """A compiler (NVRTC, hipcc, g++) or a disassembler is missing or failed."""


class CompileError(ToolchainError):
    """A compiler rejected generated source; the message carries the compiler log."""
