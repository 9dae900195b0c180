"""`import sparsert.torch`: the PyTorch integration, which lives in sparsert.integrations.torch."""

from .integrations.torch import *  # noqa: F401,F403
from .integrations.torch import __all__  # noqa: F401
