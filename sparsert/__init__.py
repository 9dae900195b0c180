"""sparsert: compile a fixed pruned weight matrix into a GPU kernel specialised to it.

    import sparsert
    kernel = sparsert.compile("layer.npy", n=256)   # CUDA, cached; kernel.source to read it
    C = kernel(B)                                     # B: K x 256 float32 CuPy array / torch CUDA tensor
    C_cpu = kernel.run_host(B_numpy)                  # same generated code, on the CPU
"""

__version__ = "0.1.0"

from .api import compile  # noqa: E402
from .conv import ConvKernel, compile_conv2d  # noqa: E402
from .errors import (  # noqa: E402
    CompileError, InputError, OptionsError, SparsertError, ToolchainError, WeightError,
)
from .kernel import KernelStats, SparseKernel  # noqa: E402
from .options import KernelOptions  # noqa: E402
from .prune import prune  # noqa: E402
from .weights import Weight, load_weight  # noqa: E402

__all__ = [
    "compile", "KernelOptions", "SparseKernel", "KernelStats", "Weight", "load_weight",
    "SparsertError", "WeightError", "OptionsError", "InputError", "ToolchainError", "CompileError",
    "__version__",
]
