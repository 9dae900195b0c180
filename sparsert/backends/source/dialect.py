"""CUDA vs HIP: the only differences the templates see, as a table of tokens (tinygrad-style)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import OptionsError


@dataclass(frozen=True)
class Dialect:
    name: str
    suffix: str  # file extension of generated source
    prelude: str  # text before the kernel; NVRTC needs no include, hipcc needs the runtime header
    binary_suffix: str  # extension of the compiled artifact


DIALECTS = {
    "cuda": Dialect(name="cuda", suffix=".cu", prelude="", binary_suffix=".cubin"),
    "hip": Dialect(name="hip", suffix=".hip", prelude="#include <hip/hip_runtime.h>", binary_suffix=".co"),
}


def dialect(target: str) -> Dialect:
    try:
        return DIALECTS[target]
    except KeyError:
        raise OptionsError(f"target={target!r}: expected one of {', '.join(DIALECTS)}") from None
