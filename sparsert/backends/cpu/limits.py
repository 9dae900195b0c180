"""x86 vector units the CPU target plans within (defined once)."""

LANES = {"avx2": 8, "avx512": 16}  # float32 lanes per vector register
NREGS = {"avx2": 16, "avx512": 32}  # vector registers
INT32_MAX = (1 << 31) - 1  # x86 address displacements are signed 32-bit
