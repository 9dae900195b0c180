"""Constants shared by the simulator's modules: integer masks and numpy
element types, the layout of the simulated address space (code, data, user
mappings, stack, return sentinel) and the name tables of general-purpose
registers, memory operand sizes and vector register widths.
"""

import numpy as np

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1
U8, U32, U64 = np.uint8, np.uint32, np.uint64
U16 = np.uint16
F32, F64 = np.float32, np.float64
QNAN_BIT = 0x00400000
DEFAULT_NAN = 0xFFC00000

CODE_BASE = 0x0040_0000          # pseudo addresses of instructions (not readable)
CODE_STRIDE = 16
DATA_BASE = 0x0800_0000          # data sections of the text
USER_BASE = 0x1_0000_0000        # Memory.map() without an address
STACK_TOP = 0x7FFF_F000_0000
RET_SENTINEL = 0x0000_DEAD_0000_0000 | 0xBEEF0

_GPR_NAMES = {}
for _i, (_q, _d, _w, _b) in enumerate([
        ("rax", "eax", "ax", "al"), ("rcx", "ecx", "cx", "cl"),
        ("rdx", "edx", "dx", "dl"), ("rbx", "ebx", "bx", "bl"),
        ("rsp", "esp", "sp", "spl"), ("rbp", "ebp", "bp", "bpl"),
        ("rsi", "esi", "si", "sil"), ("rdi", "edi", "di", "dil")]):
    _GPR_NAMES[_q] = (_i, 64)
    _GPR_NAMES[_d] = (_i, 32)
    _GPR_NAMES[_w] = (_i, 16)
    _GPR_NAMES[_b] = (_i, 8)
for _i in range(8, 16):
    _GPR_NAMES["r%d" % _i] = (_i, 64)
    _GPR_NAMES["r%dd" % _i] = (_i, 32)
    _GPR_NAMES["r%dw" % _i] = (_i, 16)
    _GPR_NAMES["r%db" % _i] = (_i, 8)
    _GPR_NAMES["r%dl" % _i] = (_i, 8)
RSP = 4
GPR64_NAMES = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"] + \
    ["r%d" % i for i in range(8, 16)]

_SIZES = {"byte": 1, "word": 2, "dword": 4, "qword": 8,
          "xmmword": 16, "ymmword": 32, "zmmword": 64}
_LANES = {"x": 4, "y": 8, "z": 16}
