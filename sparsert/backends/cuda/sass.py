"""SASS inspection of CUBINs: disassembly (nvdisasm), resource usage (cuobjdump) and FFMA-immediate stats.

What nvdisasm (CUDA 13.5) prints for FP32 immediates, measured on sm_80 and sm_90:

* finite values as a decimal with ~20 significant digits, i.e. the (near-)exact decimal expansion
  of the float32: ``0.1f`` -> ``0.10000000149011611938``, ``1.f/3`` -> ``0.3333333432674407959``,
  ``-7.0f`` -> ``-7``, ``1e-45f`` (the smallest denormal) -> ``1.4012984643248170709e-45``,
  ``1.17549435e-38f`` -> ``1.175494350822287508e-38``, ``3.4e38f`` ->
  ``3.39999995214436424908e+38``, ``1e-40f`` (denormal) -> ``9.9999461011147595815e-41``.
  20 significant digits are far more than the 9 float32 needs, so ``float(text)`` gives the exact
  float32 value as a double and the decimal form round-trips bit-exactly for every finite value.
* non-finite values as ``+INF`` / ``-INF`` / ``+QNAN`` / ``-QNAN`` (with a space before ``;``).
  The NaN *payload* is lost in this text (0xffc00001 prints as ``-QNAN``).
* ``-0.0f`` never appears as an immediate: ptxas turns ``x * -0.0f + y`` into ``FFMA Rd, -RZ, Rb, Rc``.

For bit-exact readback we run ``nvdisasm -hex``: on sm_80/sm_90 (128-bit instructions) the first
printed 64-bit encoding word of an ALU instruction with a 32-bit immediate holds the immediate in
bits 32..63 (``FFMA R18, R25, 0.10000000149011611938, R18 ; /* 0x3dcccccd19127823 */``). We take
the bits from there when the decoded word agrees with the decimal text (always, so far) and fall
back to the decimal text otherwise, so ``immediate_bits`` is exact including NaN payloads.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import struct
import tempfile
from dataclasses import dataclass

from ...errors import ToolchainError
from ...toolchain.locate import find_tool
from ...toolchain.process import run

__all__ = ["SassStats", "disassemble", "merge_stats", "resource_usage", "sass_stats", "parse_float_literal"]

_TIMEOUT_S = 600


def _hint(name: str) -> str:
    pkg = {"nvdisasm": "nvidia-cuda-nvdisasm", "cuobjdump": "nvidia-cuda-cuobjdump"}[name]
    return f"`{name}` not found (neither in the nvidia pip wheels nor on PATH); install it with `pip install {pkg}`"


def _check_cubin(cubin: bytes) -> None:
    if not isinstance(cubin, (bytes, bytearray, memoryview)):
        raise ToolchainError(f"cubin: expected bytes, got {type(cubin).__name__}")
    if bytes(cubin[:4]) != b"\x7fELF":
        raise ToolchainError(f"cubin: expected an ELF image (\\x7fELF), got first bytes {bytes(cubin[:8])!r}")


def _run_on_cubin(tool: str, args: list[str], cubin: bytes) -> str:
    exe = find_tool(tool)
    if exe is None:
        raise ToolchainError(_hint(tool))
    _check_cubin(cubin)
    with tempfile.TemporaryDirectory(prefix="sparsert-sass-") as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(bytes(cubin))
        proc = run([exe, *args, path], name=tool, what=f"{tool} on a {len(cubin)}-byte cubin",
                   timeout=_TIMEOUT_S, tmpdir=tmp)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-20:])
        raise ToolchainError(f"{tool} failed (exit {proc.returncode}) on a {len(cubin)}-byte cubin:\n{tail}")
    return proc.stdout


def disassemble(cubin: bytes, *, hex: bool = False, code_only: bool = False) -> str:
    """SASS text of ``cubin`` as printed by ``nvdisasm`` (``-hex``: with encodings, ``-c``: code only)."""
    args = []
    if hex:
        args.append("-hex")
    if code_only:
        args.append("-c")
    return _run_on_cubin("nvdisasm", args, cubin)


def resource_usage(cubin: bytes) -> dict[str, dict[str, int]]:
    """``cuobjdump -res-usage``: {function: {'REG': n, 'STACK': n, 'SHARED': n, 'LOCAL': n, ...}}."""
    out = _run_on_cubin("cuobjdump", ["-res-usage"], cubin)
    result: dict[str, dict[str, int]] = {}
    current: str | None = None
    for line in out.splitlines():
        m = re.match(r"\s*Function\s+(\S+?)\s*:\s*$", line)
        if m:
            current = m.group(1)
            continue
        if current is not None and "REG:" in line:
            fields = {}
            for key, val in re.findall(r"([A-Z_]+(?:\[\d+\])?):(\d+)", line):
                fields[key] = int(val)
            result[current] = fields
            current = None
    return result


# --- parsing -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SassStats:
    instructions: int
    """SASS instructions, NOPs excluded (they only pad the end of a function)."""
    ffma: int
    """FFMA instructions (any modifiers, any operands)."""
    ffma_imm: int
    """FFMAs with one source operand an FP32 immediate (the weight)."""
    fmul_imm: int
    fadd_imm: int
    immediates: tuple[float, ...]
    """FP32 immediates of the FFMA/FMUL instructions, in program order (as Python floats)."""
    registers: int | None
    """Registers per thread (max over functions) from ``cuobjdump -res-usage``; None without cuobjdump."""
    spills: bool | None
    """STACK/LOCAL > 0 in the resource usage, or any STL/LDL in the code."""
    immediate_bits: tuple[int, ...] = ()
    """The same immediates as raw IEEE-754 binary32 bit patterns (exact, NaN payloads included)."""
    load_use: tuple[int, ...] = ()
    """Per global load (LDG), in program order: SASS instructions from the load to the first
    instruction that reads a register it wrote (how much work covers the load's latency)."""

    hfma2: int = 0
    """HFMA2 instructions (packed half, any form: .MMA, .BF16_V2, ...)."""
    hfma2_imm: int = 0
    """HFMA2s with an immediate pair of halves (the packed weight)."""
    hfma2_immediate_bits: tuple[int, ...] = ()
    """Their 32-bit immediates (both 16-bit halves), in program order."""

    @property
    def load_use_median(self) -> float | None:
        return float(statistics.median(self.load_use)) if self.load_use else None

    def __repr__(self) -> str:  # the immediates and load distances stay in their attributes
        med = self.load_use_median
        half = f", hfma2_imm={self.hfma2_imm}" if self.hfma2 else ""
        return (f"SassStats(instructions={self.instructions}, ffma_imm={self.ffma_imm}, fmul_imm={self.fmul_imm}"
                f"{half}, registers={self.registers}, spills={self.spills}, loads={len(self.load_use)}"
                f"{'' if med is None else f', load_use_median={med:.0f}'}, immediates=<{len(self.immediates)}>)")


_INSN_RE = re.compile(
    r"^\s*/\*(?P<addr>[0-9a-fA-F]+)\*/\s+(?P<text>[^;]*?)\s*;\s*(?:/\*\s*(?P<hex>0x[0-9a-fA-F]+)\s*\*/)?\s*$"
)
_PRED_RE = re.compile(r"^@!?U?P(?:T|\d+)\s+")
_DEC_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_SPECIAL = {"INF": math.inf, "QNAN": math.nan, "SNAN": math.nan, "NAN": math.nan}
_HEX_RE = re.compile(r"^[+-]?0[xX][0-9a-fA-F]{1,8}$")


def _f32_bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


def _bits_f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def parse_float_literal(text: str) -> int | None:
    """binary32 bits of an nvdisasm FP32 operand (``0.5``, ``-7``, ``1e-05``, ``+INF``, ``-QNAN``,
    ``0x3f800000``), or None if ``text`` is not a float literal (a register, c[..][..], ...).
    NaNs come back as the default quiet NaN with the printed sign (the text has no payload)."""
    t = text.strip()
    if not t:
        return None
    sign = -1.0 if t[0] == "-" else 1.0
    body = t[1:] if t[0] in "+-" else t
    if body.upper() in _SPECIAL:
        v = _SPECIAL[body.upper()]
        if math.isnan(v):
            return 0xFFC00000 if sign < 0 else 0x7FC00000
        return _f32_bits(sign * v)
    if _HEX_RE.match(t):
        bits = int(body, 16)
        return (bits ^ 0x80000000) if sign < 0 else bits
    if _DEC_RE.match(t):
        try:
            return _f32_bits(float(t))  # exact: nvdisasm prints >= 17 significant digits
        except OverflowError:
            return None
    return None


def _opcode(text: str) -> tuple[str, list[str]]:
    text = _PRED_RE.sub("", text.strip())
    parts = text.split(None, 1)
    if not parts:
        return "", []
    op = parts[0]
    operands = [o.strip() for o in parts[1].split(",")] if len(parts) > 1 else []
    return op, operands


def _same_value(a: int, b: int) -> bool:
    """Equal bits, or both NaN with the same sign (the text form carries no payload)."""
    if a == b:
        return True
    fa, fb = _bits_f32(a), _bits_f32(b)
    return math.isnan(fa) and math.isnan(fb) and (a >> 31) == (b >> 31)


def stats_from_disassembly(text: str) -> tuple[int, int, int, int, int, tuple[int, ...], bool]:
    """(instructions, ffma, ffma_imm, fmul_imm, fadd_imm, immediate bits, has STL/LDL) of SASS text
    from ``nvdisasm`` (with or without ``-hex``)."""
    instructions = ffma = ffma_imm = fmul_imm = fadd_imm = 0
    bits_out: list[int] = []
    local_mem = False
    for line in text.splitlines():
        m = _INSN_RE.match(line)
        if not m:
            continue
        op, operands = _opcode(m.group("text"))
        base = op.split(".", 1)[0]
        if not base or base == "NOP":
            continue
        instructions += 1
        if base in ("STL", "LDL"):
            local_mem = True
        if base not in ("FFMA", "FFMA32I", "FMUL", "FMUL32I", "FADD", "FADD32I"):
            continue
        kind = base[:4]
        if kind == "FFMA":
            ffma += 1
        # the destination is operands[0]; a float literal among the sources is the immediate
        imm: int | None = None
        for src in operands[1:]:
            imm = parse_float_literal(src)
            if imm is not None:
                break
        if imm is None:
            continue
        if kind == "FADD":
            fadd_imm += 1
            continue
        if kind == "FFMA":
            ffma_imm += 1
        else:
            fmul_imm += 1
        enc = m.group("hex")
        if enc is not None:
            raw = (int(enc, 16) >> 32) & 0xFFFFFFFF  # imm32 field of the first encoding word
            if _same_value(raw, imm):
                imm = raw
        bits_out.append(imm)
    return instructions, ffma, ffma_imm, fmul_imm, fadd_imm, tuple(bits_out), local_mem


_HALF_LITERAL = re.compile(r"^[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|INF|QNAN|NAN)$", re.I)


def half_stats_from_disassembly(text: str) -> tuple[int, int, tuple[int, ...]]:
    """(HFMA2 count, HFMA2s with an immediate, their 32-bit immediates) of SASS text. nvdisasm
    prints a packed immediate as two decimal halves (``HFMA2.MMA R6, R6, 1.0009765625,
    1.0009765625, RZ``); its bits are the high word of the first encoding word, as for FFMA."""
    hfma2 = imm = 0
    bits: list[int] = []
    for line in text.splitlines():
        m = _INSN_RE.match(line)
        if not m:
            continue
        op, operands = _opcode(m.group("text"))
        if op.split(".", 1)[0] != "HFMA2":
            continue
        if all(o.lstrip("-").split(".")[0] in ("RZ", "0") for o in operands[1:]):
            continue  # HFMA2.MMA Rd, -RZ, RZ, 0, 0: ptxas's idiom for moving zero, not arithmetic
        hfma2 += 1
        if sum(1 for o in operands[1:] if _HALF_LITERAL.match(o)) >= 2:
            imm += 1
            enc = m.group("hex")
            if enc is not None:
                bits.append((int(enc, 16) >> 32) & 0xFFFFFFFF)
    return hfma2, imm, tuple(bits)


def merge_stats(parts: list[SassStats]) -> SassStats:
    """One SassStats over several CUBINs (the slabs of a kernel): counts add, sequences
    concatenate, registers are the maximum, spills any."""
    if len(parts) == 1:
        return parts[0]
    merged = {}
    for name in SassStats.__dataclass_fields__:
        vals = [getattr(p, name) for p in parts]
        if isinstance(vals[0], tuple):
            merged[name] = tuple(x for v in vals for x in v)
        elif name == "registers":
            known = [v for v in vals if v is not None]
            merged[name] = max(known) if known else None
        elif name == "spills":
            merged[name] = None if any(v is None for v in vals) else any(vals)
        else:
            merged[name] = sum(vals)
    return SassStats(**merged)


_REG_RE = re.compile(r"(?<![\w.])R(\d+)\b")
_WIDTH = {"64": 2, "128": 4}


def load_use_distances(text: str, *, horizon: int = 4096) -> tuple[int, ...]:
    """For each LDG of SASS `text`, the instruction count to the first reader of its destination
    register(s) (a 64/128-bit load writes 2/4 consecutive registers); loads whose value is not read
    within `horizon` instructions (or before the function ends) are left out."""
    ops: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        m = _INSN_RE.match(line)
        if m:
            op, operands = _opcode(m.group("text"))
            if op and op.split(".", 1)[0] != "NOP":
                ops.append((op, operands))
    out = []
    for i, (op, operands) in enumerate(ops):
        parts = op.split(".")
        if parts[0] != "LDG" or not operands:
            continue
        first = _REG_RE.match(operands[0])
        if first is None:
            continue
        width = next((_WIDTH[p] for p in parts[1:] if p in _WIDTH), 1)
        dest = {int(first.group(1)) + j for j in range(width)}
        for j in range(i + 1, min(len(ops), i + 1 + horizon)):
            o2, src = ops[j]
            if o2.split(".", 1)[0] == "EXIT":
                break
            reads = {int(r) for x in src[1:] for r in _REG_RE.findall(x)}
            if o2.split(".", 1)[0] in ("STG", "STS", "ST", "STL"):  # stores read every operand
                reads |= {int(r) for r in _REG_RE.findall(src[0])} if src else set()
            if reads & dest:
                out.append(j - i)
                break
    return tuple(out)


def sass_stats(cubin: bytes) -> SassStats:
    """Count instructions and FP32 immediates of ``cubin`` (nvdisasm -hex) and read its resources
    (cuobjdump -res-usage, when installed)."""
    text = disassemble(cubin, hex=True, code_only=True)
    n, ffma, ffma_imm, fmul_imm, fadd_imm, bits, local_mem = stats_from_disassembly(text)
    hfma2, hfma2_imm, hbits = half_stats_from_disassembly(text)
    registers: int | None = None
    spills: bool | None = local_mem
    if find_tool("cuobjdump") is not None:
        usage = resource_usage(cubin)
        regs = [f["REG"] for f in usage.values() if "REG" in f]
        registers = max(regs) if regs else None
        if any(f.get("STACK", 0) > 0 or f.get("LOCAL", 0) > 0 for f in usage.values()):
            spills = True
    return SassStats(
        instructions=n,
        ffma=ffma,
        ffma_imm=ffma_imm,
        fmul_imm=fmul_imm,
        fadd_imm=fadd_imm,
        immediates=tuple(_bits_f32(b) for b in bits),
        registers=registers,
        spills=spills,
        immediate_bits=bits,
        load_use=load_use_distances(text),
        hfma2=hfma2,
        hfma2_imm=hfma2_imm,
        hfma2_immediate_bits=hbits,
    )
