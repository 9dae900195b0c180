"""NVIDIA hardware and launch limits sparsert plans within (every arch it targets, sm_70..sm_120).
Defined once: the parameter choice, the register cap, the build's spill retry, the tuner and the
launch checks all read them from here."""

SHARED_MEMORY_BYTES = 48 * 1024  # static shared memory a block may use without opt-in
REGISTER_FILE = 65536  # 32-bit registers per SM, and per block, on every arch since sm_70
MAX_REGISTERS_PER_THREAD = 255
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK = (1024, 1024, 64)  # blockDim limits per dimension
MAX_GRID = (2**31 - 1, 65535, 65535)  # gridDim limits per dimension
WARP = 32
