"""x86_sim -- a small x86-64 interpreter for a fixed instruction subset.

Purpose: check the *numbers* produced by compiler-generated (AVX-512) kernels on
machines whose CPU cannot run them.  Input is assembly text in GNU ``as``
``.intel_syntax noprefix`` form.  Only numpy and the standard library are used.

Quick use::

    prog = Program(asm_text)
    mem = Memory()
    a = mem.map(A)                 # any C-contiguous numpy array, updated in place
    rax = prog.call("kernel", args=[a, n], memory=mem, max_steps=10**7)
    prog.steps                     # instructions executed by the last call

Floating point is exact IEEE binary32 with round-to-nearest-even, no FTZ/DAZ
(MXCSR default), x86 NaN rules (first NaN source operand, quietened; default
NaN 0xFFC00000 for invalid operations; MAX/MIN return the second source when
either is NaN or both are zero).  FMA rounds once (exact product in binary64,
sum rounded to odd in binary64, then one rounding to binary32).  Exceptions,
as the hardware defines them: VDPBF16PS always uses DAZ/FTZ (see ``_dpbf16``);
VCVTPH2PS is exact; VCVTPS2PH rounds to nearest even (imm8 0, or 4 = MXCSR)
with overflow to inf, subnormal results and quietened NaNs (``_f2h``).

Masked (``{kN}``) memory operands access only the selected elements (dword
or, for the half / word forms, word granularity): masked-off elements of a
load read nothing and cannot fault, a masked store writes only selected
elements; a masked ``{1to16}`` broadcast reads its dword only if some lane is
selected.

The decoder is table-driven: add an entry to ``BUILDERS`` to support another
mnemonic (a builder gets the decoder, the parsed operands and the instruction
index, and returns a closure that executes the instruction and returns ``None``
to fall through or the index of the next instruction).
"""

# The builder modules register their instructions in BUILDERS when imported.
from . import isa_control as isa_control
from . import isa_convert as isa_convert
from . import isa_mask as isa_mask
from . import isa_scalar as isa_scalar
from . import isa_vector as isa_vector
from .errors import AsmError, MemoryFault, SimError, StepLimitExceeded
from .floats import _f2h as _f2h
from .floats import _fadd as _fadd
from .floats import _h2f as _h2f
from .floats import fma_f32
from .machine import Program
from .memory import Memory
from .registry import BUILDERS

__all__ = ["Program", "Memory", "SimError", "AsmError", "MemoryFault",
           "StepLimitExceeded", "fma_f32", "BUILDERS"]
