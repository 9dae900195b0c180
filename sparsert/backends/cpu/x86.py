"""Emit GNU assembler (Intel syntax) for a lowered sparse matrix: one function per group of
consecutive planner blocks (emit.group_blocks), each block a "segment" of the tile loop.

Register blocking (per block, per tile of W = V * lanes columns of N):
  acc[slot][v] (R x V vector registers) += w * B[k, tile + v*lanes ...], every weight w a
  RIP-relative constant (x86 has no FP immediates), every B row offset k*W*4 a displacement.
For each distinct k the V vectors of B row k are loaded once, then each nonzero of that k does V
FMAs. Decisions (register numbering, load/store forms, displacements) are made here; the frame
(tile loop, labels, tables) is printed by templates/cpu/kernel.s.j2.

Function ABI (SysV, leaf, no callee-saved registers touched, red zone used for one int):
  void fn(const float *P, float *C, const float *R, long col_begin, long col_end)
P is the runtime's packed panel of B's columns [col_begin, col_end): tile t is K x W floats at
P + t*tile_floats(K, W) (zero-padded past col_end, so loads never need masks). C and R are indexed
C + row*ldc + j. Full tiles store plainly; the last partial tile stores masked (AVX2: vmaskmovps
with vpcmpgtd-made masks, AVX-512: k-masks), so no byte outside [col_begin, col_end) of C is
touched and R is read only there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import OptionsError
from .limits import INT32_MAX, LANES, NREGS
from .lower import Lowered, LoweredBlock


@dataclass(frozen=True)
class EmitConfig:
    isa: str = "avx2"
    v: int = 1  # vectors per tile (tile width W = v * lanes)
    rows: int = 14  # R: rows per block (accumulator slots), at most max_rows()
    ldc: int = 0  # floats between rows of C and R (0: n)
    # avx512 only: 'embedded' = vfmadd231ps zmm, zmm, [rip+w]{1to16} (V loads of w per nonzero,
    # no register); 'register' = one vbroadcastss + V register FMAs.
    bcast: str = "embedded"
    # FMAs (nonzeros x V) of consecutive planner blocks one function runs per tile (0: one block)
    group_fmas: int = 0

    @property
    def lanes(self) -> int:
        return LANES[self.isa]

    @property
    def width(self) -> int:
        return self.v * self.lanes

    def check(self) -> None:
        if self.isa not in LANES:
            raise OptionsError(f"isa={self.isa!r}: expected avx2 or avx512")
        if self.bcast not in ("embedded", "register"):
            raise OptionsError(f"bcast={self.bcast!r}: expected embedded or register")
        if self.v < 1 or self.rows < 1 or self.rows > max_rows(self.isa, self.v, self.bcast):
            raise OptionsError(f"rows={self.rows}, v={self.v}: need 1 <= v and 1 <= rows <= "
                             f"{max_rows(self.isa, self.v, self.bcast)} for {self.isa}")


def tile_floats(k: int, width: int) -> int:
    """Floats from one packed tile of B to the next: K rows of W, + 16 so successive tiles start
    in different L1 sets (see pack() in runtime.c)."""
    return k * width + 16


def _uses_wreg(isa: str, bcast: str) -> bool:
    return isa == "avx2" or bcast == "register"


def max_rows(isa: str, v: int, bcast: str = "embedded") -> int:
    """Largest R with R*V accumulators + V rows of B + the weight register in the register file;
    the epilogue reuses those once the body is done and needs a temporary (+ V ymm masks on
    AVX2's tail tile); ReLU's zero takes a register only if one is left, else a memory constant.
    (More rows per block = more FMAs per load of B: measured R=13 vs 12 vs 10 at V=1, 9-30%.)"""
    body = v + _uses_wreg(isa, bcast)
    store = 1 + (v if isa == "avx2" else 0)
    return max(0, (NREGS[isa] - max(body, store)) // v)


class Regs:
    """Register numbering for one configuration."""

    def __init__(self, cfg: EmitConfig):
        p = "ymm" if cfg.isa == "avx2" else "zmm"
        r, v = cfg.rows, cfg.v
        self.acc = [[f"{p}{s * v + i}" for i in range(v)] for s in range(r)]
        nxt = r * v
        self.b = [f"{p}{nxt + i}" for i in range(v)]
        nxt += v
        self.w = f"{p}{nxt}" if _uses_wreg(cfg.isa, cfg.bcast) else None
        nxt += self.w is not None
        # the epilogue's registers: the body's B/weight registers, then any left over
        spare = self.b + ([self.w] if self.w else []) + [f"{p}{i}" for i in range(nxt, NREGS[cfg.isa])]
        self.tmp = spare[0]
        if cfg.isa == "avx2":
            self.mask, rest = spare[1:1 + v], spare[1 + v:]
        else:
            self.mask, rest = [f"k{i + 1}" for i in range(v)], spare[1:]  # k0 = "no mask"
        # ReLU's zero: a register when one is free, else the zero vector in the constant pool
        self.zero = rest[0] if rest else None


def _disp(value: int, what: str) -> int:
    if value > INT32_MAX:
        raise OptionsError(f"{what} offset {value} bytes exceeds a 32-bit displacement of the CPU "
                           f"code; split the problem (smaller N or M/K)")
    return value


def _pool(label: str, bits: np.ndarray) -> str:
    """`.long` words, 8 per line, bit-exact."""
    if len(bits) == 0:
        return ""
    words = [f"0x{b:08x}" for b in bits.tolist()]
    lines = [f"{label}:"] + ["\t.long " + ",".join(words[i:i + 8]) for i in range(0, len(words), 8)]
    return "\n".join(lines)


def emit_block(b: int, blk: LoweredBlock, low: Lowered, cfg: EmitConfig) -> dict:
    """The per-block text pieces the template prints, plus the block's constant pool."""
    rg = Regs(cfg)
    isa, v, lanes = cfg.isa, cfg.v, cfg.lanes
    vb = 4 * lanes  # bytes per vector
    ptr = "YMMWORD PTR" if isa == "avx2" else "ZMMWORD PTR"
    ldb4, ldc4 = 4 * cfg.width, 4 * (cfg.ldc or low.n)
    if len(blk.ks):
        _disp(int(blk.ks[-1]) * ldb4 + vb * v, "B row")
    if blk.rows:
        _disp(max(blk.rows) * ldc4 + vb * v, "C row")
    lw, lb = f".Lw{b}", f".Lb{b}"

    # --- masks of the tail tile (r8 = columns left, 0 < r8 < W there)
    if isa == "avx2":
        masks = ["\tmov DWORD PTR [rsp-8], r8d",  # red zone: this is a leaf function
                 f"\tvpbroadcastd {rg.tmp}, DWORD PTR [rsp-8]"]
        masks += [f"\tvpcmpgtd {rg.mask[i]}, {rg.tmp}, {ptr} [rip+.Liota+{vb * i}]" for i in range(v)]
    else:
        masks = ["\tlea rax, [rip+.Lktab]"]
        for i in range(v):
            masks += [f"\tmov ecx, DWORD PTR [rax+r8*4+{4 * (cfg.width + 1) * i}]", f"\tkmovw {rg.mask[i]}, ecx"]

    # --- accumulators start at the bias (saves an add per output) or zero
    init = []
    for s in range(len(blk.rows)):
        for i in range(v):
            a = rg.acc[s][i]
            init.append(f"\tvbroadcastss {a}, DWORD PTR [rip+{lb}+{4 * s}]" if low.bias_bits is not None
                        else f"\tvxorps {a}, {a}, {a}")
    # slots beyond the block's rows are never touched

    # --- the unrolled body
    load = [f"\tvmovups {rg.b[i]}, {ptr} [rdi+%d]" for i in range(v)]
    # One string per nonzero (weight broadcast + its FMAs), the tap's B loads prepended to its
    # first nonzero: list comprehensions, since this loop is most of the compiler's Python time.
    ks, starts, slots = blk.ks.tolist(), blk.starts.tolist(), blk.slots.tolist()
    if rg.w is not None:
        fma = ["\n".join(f"\tvfmadd231ps {rg.acc[s][i]}, {rg.b[i]}, {rg.w}" for i in range(v))
               for s in range(len(blk.rows))]
        pre = f"\tvbroadcastss {rg.w}, DWORD PTR [rip+{lw}+"
        body = [f"{pre}{4 * j}]\n{fma[s]}" for j, s in enumerate(slots)]
    else:
        fma = [[f"\tvfmadd231ps {rg.acc[s][i]}, {rg.b[i]}, DWORD PTR [rip+{lw}+" for i in range(v)]
               for s in range(len(blk.rows))]
        body = ["\n".join(f"{f}{4 * j}]{{1to16}}" for f in fma[s]) for j, s in enumerate(slots)]
    for t, k in enumerate(ks):
        off = k * ldb4
        j = starts[t]
        body[j] = "\n".join([load[i] % (off + vb * i) for i in range(v)] + [body[j]])

    # --- epilogue at the store: (+ residual) (ReLU); full tiles plain, the tail masked
    full, tail = [], list(masks)
    zero = rg.zero or f"{ptr} [rip+.Lzero]"
    if low.relu and rg.zero:
        z = rg.zero
        full.append(f"\tvxorps {z}, {z}, {z}")
        tail.append(f"\tvxorps {z}, {z}, {z}")
    for s, row in enumerate(blk.rows):
        for i in range(v):
            a, off, m = rg.acc[s][i], row * ldc4 + vb * i, rg.mask[i]
            if low.residual:
                full.append(f"\tvaddps {a}, {a}, {ptr} [rdx+{off}]")
                tail.append(f"\tvmaskmovps {rg.tmp}, {m}, {ptr} [rdx+{off}]" if isa == "avx2"
                            else f"\tvmovups {rg.tmp}{{{m}}}{{z}}, {ptr} [rdx+{off}]")
                tail.append(f"\tvaddps {a}, {a}, {rg.tmp}")
            if low.relu:
                full.append(f"\tvmaxps {a}, {a}, {zero}")
                tail.append(f"\tvmaxps {a}, {a}, {zero}")
            full.append(f"\tvmovups {ptr} [rsi+{off}], {a}")
            tail.append(f"\tvmaskmovps {ptr} [rsi+{off}], {m}, {a}" if isa == "avx2"
                        else f"\tvmovups {ptr} [rsi+{off}]{{{m}}}, {a}")

    pool = [_pool(lw, blk.bits)]
    if low.bias_bits is not None and blk.rows:
        pool.append(_pool(lb, low.bias_bits[np.asarray(blk.rows)]))
    return {"index": b, "nnz": blk.nnz, "rows": len(blk.rows),
            "init": "\n".join(init), "body": "\n".join(body), "store_full": "\n".join(full),
            "store_tail": "\n".join(tail), "pool": "\n".join(p for p in pool if p)}


def constants(cfg: EmitConfig) -> str:
    """Per-file constants: a zero vector (ReLU when no register is free), and AVX2 lane indices
    (mask = lane < columns left) or the AVX-512 k-mask table (entry [v][r] = lanes of vector v
    valid when r columns are left, r = 0..W)."""
    w = cfg.width
    zero = "\t.p2align 6\n.Lzero:\n\t.long " + ",".join(["0"] * cfg.lanes) + "\n"
    if cfg.isa == "avx2":
        words = [f"{i}" for i in range(w)]
        return zero + "\t.p2align 5\n.Liota:\n" + "\n".join(
            "\t.long " + ",".join(words[i:i + 8]) for i in range(0, w, 8))
    rows = []
    for i in range(cfg.v):
        rows.append(",".join(str((1 << min(16, max(0, r - 16 * i))) - 1) for r in range(w + 1)))
    return zero + "\t.p2align 6\n.Lktab:\n" + "\n".join("\t.long " + r for r in rows)


