"""sparsert: compile a fixed pruned weight matrix into a kernel specialised to it.

    import sparsert
    kernel = sparsert.compile("layer.npy", n=256)   # CUDA, cached; kernel.source to read it
    C = kernel(B)                                     # B: K x 256 float32 CuPy array / torch CUDA tensor
    C_cpu = kernel.run_host(B_numpy)                  # same generated code, on the CPU
"""

from .api import compile, compile_conv2d
from .errors import (
    CompileError,
    InputError,
    OptionsError,
    SparsertError,
    ToolchainError,
    WeightError,
)
from .frontend.prune import prune
from .frontend.weights import Weight, load_weight
from .options import KernelOptions
from .runtime.conv_kernel import ConvKernel
from .runtime.kernel import SparseKernel
from .runtime.stats import KernelStats
from .version import __version__

__all__ = [
    "compile", "compile_conv2d", "ConvKernel", "KernelOptions", "SparseKernel", "KernelStats", "Weight",
    "load_weight", "prune", "SparsertError", "WeightError", "OptionsError", "InputError", "ToolchainError",
    "CompileError", "__version__",
]
