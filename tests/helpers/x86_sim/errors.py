"""Exception classes raised by the simulator: :class:`SimError` and its
subclasses for unparsable or unsupported text (:class:`AsmError`), bad memory
accesses (:class:`MemoryFault`) and runaway programs
(:class:`StepLimitExceeded`).
"""


class SimError(Exception):
    """Base class of all simulator errors."""


class AsmError(SimError):
    """Unparsable text or unsupported instruction/operand."""


class MemoryFault(SimError):
    """Access to an unmapped / read-only address, or a misaligned vmovaps."""

    def __init__(self, msg, address=None, size=None):
        super().__init__(msg)
        self.address = address
        self.size = size
        self.lineno = None
        self.instruction = None


class StepLimitExceeded(SimError):
    pass
