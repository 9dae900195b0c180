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
    # element type of C and R ('float32', 'float16', 'bfloat16'); the panel of B is float32
    # whatever the dtype (the runtime converts while packing), so only the epilogue changes
    dtype: str = "float32"
    # vdpbf16ps (AVX512-BF16) instead of vfmadd231ps: each instruction multiplies a pair of rows
    # of B (bf16, interleaved in the panel) by a pair of bf16 weights, accumulating in float32
    pairs: bool = False

    @property
    def esize(self) -> int:
        """Bytes per element of C and R."""
        return 4 if self.dtype == "float32" else 2

    @property
    def lanes(self) -> int:
        return LANES[self.isa]

    @property
    def width(self) -> int:
        return self.v * self.lanes

    def check(self) -> None:
        if self.isa not in LANES:
            raise OptionsError(f"isa={self.isa!r}: expected avx2 or avx512")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise OptionsError(f"dtype={self.dtype!r}: expected float32, float16 or bfloat16")
        if self.pairs and (self.isa != "avx512" or self.dtype != "bfloat16"):
            raise OptionsError("vdpbf16ps kernels need isa='avx512' and dtype='bfloat16'")
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
    AVX2's float32 tail tile; a half dtype's AVX2 epilogue needs two temporaries and no masks, so
    never more); ReLU's zero takes a register only if one is left, else a memory constant.
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
        self.tmp2 = None
        if cfg.isa == "avx2" and cfg.dtype != "float32":  # tails copied through the red zone: no masks
            self.mask, self.tmp2, rest = [], spare[1], spare[2:]
        elif cfg.isa == "avx2":
            self.mask, rest = spare[1:1 + v], spare[1 + v:]
        else:
            self.mask, rest = [f"k{i + 1}" for i in range(v)], spare[1:]  # k0 = "no mask"
        self.nan = f"k{v + 1}"  # AVX-512 bfloat16 stores: NaN lanes (v <= 4, so k5 at most)
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


def _float_epilogue(blk: LoweredBlock, cfg: EmitConfig, rg: Regs, masks: list[str], ldc4: int,
                    low: Lowered) -> tuple[list[str], list[str]]:
    """float32 C and R: full tiles stored plainly, the tail masked (AVX2 vmaskmovps, AVX-512 k)."""
    isa, v, vb = cfg.isa, cfg.v, 4 * cfg.lanes
    ptr = "YMMWORD PTR" if isa == "avx2" else "ZMMWORD PTR"
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
    return full, tail

# Half-precision C and R (the accumulators stay float32; one rounding, RNE, at the store):
#   float16: F16C / AVX-512F vcvtps2ph (imm 0 = nearest even) and vcvtph2ps, exact both ways;
#   bfloat16: widening is a shift (bf16 is the top half of a float32); narrowing is the integer
#   round-to-nearest-even of precision.half_bits ((x + 0x7fff + lsb) >> 16, NaN kept quiet),
#   exact for every input and the same on every x86 (AVX512-BF16's vcvtneps2bf16 would flush
#   float32 subnormals).
# The tail tile: AVX-512 masks every access with k registers (masked loads never fault); AVX2
# has no 16-bit masked moves, so the tail's half vectors go through the red zone and a word
# loop copies exactly the columns left: nothing outside [col_begin, col_end) is read or written.
RED = -48  # red-zone bytes for one half vector (16 bytes); [rsp-8] holds the AVX2 float32 mask count


def _x(reg: str) -> str:
    """The xmm (AVX2) or ymm (AVX-512) register holding the low half of `reg` (16-bit lanes)."""
    return ("x" if reg.startswith("y") else "y") + reg[1:]


def _widen(cfg: EmitConfig, dst: str, src: str, mask: str = "") -> list[str]:
    """dst (float32 vector) := the half vector at memory operand `src` (mask: "{kN}{z}" or "")."""
    if cfg.dtype == "float16":
        return [f"\tvcvtph2ps {dst}{mask}, {src}"]
    return [f"\tvpmovzxwd {dst}{mask}, {src}", f"\tvpslld {dst}, {dst}, 16"]


def _bf16_round(cfg: EmitConfig, rg: Regs, a: str) -> list[str]:
    """rg.tmp's 32-bit lanes := the bfloat16 bits of a (RNE, NaN quiet) in their low halves; a is
    dead afterwards (the last use of an accumulator), so NaN lanes are quietened in place."""
    t = rg.tmp
    if cfg.isa == "avx2":
        return [f"\tvpsrld {t}, {a}, 16", f"\tvpand {t}, {t}, YMMWORD PTR [rip+.Lone]",
                f"\tvpaddd {t}, {t}, {a}", f"\tvpaddd {t}, {t}, YMMWORD PTR [rip+.Lround]",
                f"\tvcmpunordps {rg.tmp2}, {a}, {a}", f"\tvpor {a}, {a}, YMMWORD PTR [rip+.Lquiet]",
                f"\tvblendvps {t}, {t}, {a}, {rg.tmp2}", f"\tvpsrld {t}, {t}, 16"]
    return [f"\tvpsrld {t}, {a}, 16", f"\tvpandd {t}, {t}, DWORD PTR [rip+.Lone]{{1to16}}",
            f"\tvpaddd {t}, {t}, {a}", f"\tvpaddd {t}, {t}, DWORD PTR [rip+.Lround]{{1to16}}",
            f"\tvcmpps {rg.nan}, {a}, {a}, 3",
            f"\tvpord {t}{{{rg.nan}}}, {a}, DWORD PTR [rip+.Lquiet]{{1to16}}", f"\tvpsrld {t}, {t}, 16"]


def _narrow_avx2(cfg: EmitConfig, rg: Regs, a: str) -> list[str]:
    """xmm of rg.tmp := the 8 half values of ymm a."""
    if cfg.dtype == "float16":
        return [f"\tvcvtps2ph {_x(rg.tmp)}, {a}, 0"]
    t = rg.tmp
    return _bf16_round(cfg, rg, a) + [f"\tvpackusdw {t}, {t}, {t}", f"\tvpermq {t}, {t}, 8"]


def _copy_words(label: str, src: str, dst: str, first: int) -> list[str]:
    """Copy min(columns left - first, 8) 16-bit words (none if <= 0) from [src + 2j] to [dst + 2j]
    (src, dst: address expressions without brackets); r9-r11 are free caller-saved registers."""
    return [f"\tlea r9, [r8-{first}]", "\tmov r10d, 8", "\tcmp r9, r10", "\tcmovg r9, r10",
            "\txor r10d, r10d", f"{label}:", "\tcmp r10, r9", f"\tjge {label}d",
            f"\tmovzx r11d, WORD PTR [{src}+r10*2]", f"\tmov WORD PTR [{dst}+r10*2], r11w",
            "\tinc r10", f"\tjmp {label}", f"{label}d:"]


def _half_epilogue(b: int, blk: LoweredBlock, cfg: EmitConfig, rg: Regs, masks: list[str], ldc: int,
                   low: Lowered) -> tuple[list[str], list[str]]:
    """float16 / bfloat16 C and R (ldc: bytes between rows)."""
    isa, v, lanes = cfg.isa, cfg.v, cfg.lanes
    hb = 2 * lanes  # bytes of one half vector
    hptr = "XMMWORD PTR" if isa == "avx2" else "YMMWORD PTR"
    full, tail = [], list(masks)
    zero = rg.zero or f"{'YMMWORD' if isa == 'avx2' else 'ZMMWORD'} PTR [rip+.Lzero]"
    if low.relu and rg.zero:
        for out in (full, tail):
            out.append(f"\tvxorps {rg.zero}, {rg.zero}, {rg.zero}")
    for s, row in enumerate(blk.rows):
        for i in range(v):
            a, off = rg.acc[s][i], row * ldc + hb * i
            lab = f".Lh{b}_{s}_{i}"
            if low.residual:
                full += _widen(cfg, rg.tmp, f"{hptr} [rdx+{off}]") + [f"\tvaddps {a}, {a}, {rg.tmp}"]
                if isa == "avx2":
                    x = _x(rg.tmp)
                    tail += [f"\tvpxor {x}, {x}, {x}", f"\tvmovdqu XMMWORD PTR [rsp{RED}], {x}"]
                    tail += _copy_words(f"{lab}r", f"rdx+{off}", f"rsp{RED}", lanes * i)
                    tail += _widen(cfg, rg.tmp, f"XMMWORD PTR [rsp{RED}]")
                else:
                    m = rg.mask[i]
                    tail += _widen(cfg, rg.tmp, f"{hptr} [rdx+{off}]", f"{{{m}}}{{z}}")
                tail.append(f"\tvaddps {a}, {a}, {rg.tmp}")
            if low.relu:
                for out in (full, tail):
                    out.append(f"\tvmaxps {a}, {a}, {zero}")
            if isa == "avx2":
                narrow = _narrow_avx2(cfg, rg, a)
                full += narrow + [f"\tvmovdqu XMMWORD PTR [rsi+{off}], {_x(rg.tmp)}"]
                tail += narrow + [f"\tvmovdqu XMMWORD PTR [rsp{RED}], {_x(rg.tmp)}"]
                tail += _copy_words(f"{lab}w", f"rsp{RED}", f"rsi+{off}", lanes * i)
            elif cfg.dtype == "float16":
                full.append(f"\tvcvtps2ph YMMWORD PTR [rsi+{off}], {a}, 0")
                tail.append(f"\tvcvtps2ph YMMWORD PTR [rsi+{off}]{{{rg.mask[i]}}}, {a}, 0")
            else:
                rounded = _bf16_round(cfg, rg, a)
                full += rounded + [f"\tvpmovdw YMMWORD PTR [rsi+{off}], {rg.tmp}"]
                tail += rounded + [f"\tvpmovdw YMMWORD PTR [rsi+{off}]{{{rg.mask[i]}}}, {rg.tmp}"]
    return full, tail


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
        _disp(max(blk.rows) * cfg.esize * (cfg.ldc or low.n) + cfg.esize * lanes * v, "C row")
    lw, lb = f".Lw{b}", f".Lb{b}"

    # --- masks of the tail tile (r8 = columns left, 0 < r8 < W there)
    if isa == "avx2" and cfg.dtype != "float32":
        masks = []  # the half epilogue copies its tail through the red zone
    elif isa == "avx2":
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
    op = "vdpbf16ps" if cfg.pairs else "vfmadd231ps"
    if rg.w is not None:
        fma = ["\n".join(f"\t{op} {rg.acc[s][i]}, {rg.b[i]}, {rg.w}" for i in range(v))
               for s in range(len(blk.rows))]
        pre = f"\tvbroadcastss {rg.w}, DWORD PTR [rip+{lw}+"
        body = [f"{pre}{4 * j}]\n{fma[s]}" for j, s in enumerate(slots)]
    else:
        fma = [[f"\t{op} {rg.acc[s][i]}, {rg.b[i]}, DWORD PTR [rip+{lw}+" for i in range(v)]
               for s in range(len(blk.rows))]
        body = ["\n".join(f"{f}{4 * j}]{{1to16}}" for f in fma[s]) for j, s in enumerate(slots)]
    for t, k in enumerate(ks):
        off = k * ldb4
        j = starts[t]
        body[j] = "\n".join([load[i] % (off + vb * i) for i in range(v)] + [body[j]])

    # --- epilogue at the store: (+ residual) (ReLU); full tiles plain, the tail masked
    if cfg.dtype != "float32":
        full, tail = _half_epilogue(b, blk, cfg, rg, masks, cfg.esize * (cfg.ldc or low.n), low)
    else:
        full, tail = _float_epilogue(blk, cfg, rg, masks, ldc4, low)

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
    if cfg.dtype == "bfloat16":  # the rounding's integer constants (AVX2: vectors, AVX-512: broadcast)
        copies = 8 if cfg.isa == "avx2" else 1
        zero += "".join(f"\t.p2align 5\n{name}:\n\t.long " + ",".join([value] * copies) + "\n"
                        for name, value in ((".Lone", "1"), (".Lround", "0x7fff"), (".Lquiet", "0x400000")))
    if cfg.isa == "avx2":
        words = [f"{i}" for i in range(w)]
        return zero + "\t.p2align 5\n.Liota:\n" + "\n".join(
            "\t.long " + ",".join(words[i:i + 8]) for i in range(0, w, 8))
    rows = []
    for i in range(cfg.v):
        rows.append(",".join(str((1 << min(16, max(0, r - 16 * i))) - 1) for r in range(w + 1)))
    return zero + "\t.p2align 6\n.Lktab:\n" + "\n".join("\t.long " + r for r in rows)


