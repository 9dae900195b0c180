"""The assembler front end: splits GNU ``as`` Intel-syntax text into
statements (comments, labels, prefixes), handles the section, alignment,
equate and data directives, and lays out the data sections and symbol table;
:class:`_Assembler` holds these steps as the methods that :class:`Program`
inherits.
"""

import ast
import re

import numpy as np

from .constants import CODE_BASE, CODE_STRIDE, DATA_BASE, U8
from .errors import AsmError
from .operands import _split_top, eval_expr

_IGNORED_DIRECTIVES = {
    ".intel_syntax", ".globl", ".global", ".local", ".weak", ".hidden",
    ".protected", ".internal", ".type", ".size", ".file", ".ident", ".loc",
    ".addrsig", ".addrsig_sym", ".note", ".arch", ".code64", ".end",
    ".lcomm_never", ".sleb128_never", ".uleb128_never"}
_DATA_SIZES = {".byte": 1, ".short": 2, ".value": 2, ".word": 2, ".hword": 2,
               ".2byte": 2, ".long": 4, ".int": 4, ".4byte": 4,
               ".quad": 8, ".8byte": 8}
_PREFIXES = {"rep", "repe", "repz", "repne", "repnz", "notrack", "bnd", "lock",
             "{vex}", "{vex3}", "{vex2}", "{evex}", "{load}", "{store}", "data16"}


class _Insn:
    __slots__ = ("mnemonic", "operands", "lineno", "text")

    def __init__(self, mnemonic, operands, lineno, text):
        self.mnemonic, self.operands, self.lineno, self.text = \
            mnemonic, operands, lineno, text


def _strip_comment(line):
    out = []
    inq = False
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == '"':
            inq = not inq
        elif not inq:
            if ch == "#" or line.startswith("//", i):
                break
        out.append(ch)
        i += 1
    return "".join(out)


class _Assembler:
    """Program's assembler half: turns the text into instructions, labels,
    data sections and equates (``_parse``), then places the sections and
    resolves symbols and data fixups (``_layout``)."""

    # parsing ----------------------------------------------------------------
    def _parse(self, text):
        cur = ".text"
        stack = []
        lines = text.splitlines()
        for lineno, raw in enumerate(lines, 1):
            line = _strip_comment(raw).strip()
            if not line:
                continue
            stmts = [line] if '"' in line else [s.strip() for s in line.split(";")]
            for stmt in stmts:
                try:
                    cur = self._stmt(stmt, cur, stack, lineno, raw.strip())
                except AsmError as e:
                    if "line " in str(e)[:8]:
                        raise
                    raise AsmError("line %d: %s: %s" % (lineno, e, raw.strip())) from None

    def _define(self, name, cur, lineno):
        if name in self.text_labels or name in self.data_labels or name in self.equ:
            raise AsmError("symbol %r defined twice" % name)
        if cur == ".text":
            self.text_labels[name] = len(self.insns)
        else:
            self.data_labels[name] = (cur, len(self.sections[cur]))

    def _section(self, name, flags=""):
        if name.startswith(".text"):
            return ".text"
        if name not in self.sections:
            self.sections[name] = bytearray()
            self.section_writable[name] = (
                name.startswith((".data", ".bss", ".tdata", ".tbss")) or "w" in flags)
        return name

    def _stmt(self, stmt, cur, stack, lineno, raw):
        while True:
            m = re.match(r"([A-Za-z_.$][\w.$@]*)\s*:(?!:)\s*(.*)$", stmt)
            if not m:
                break
            self._define(m.group(1), cur, lineno)
            stmt = m.group(2)
        if not stmt:
            return cur
        if stmt[0] == ".":
            parts = stmt.split(None, 1)
            dname = parts[0].lower()
            args = parts[1].strip() if len(parts) > 1 else ""
            return self._directive(dname, args, cur, stack, lineno)
        if cur != ".text":
            raise AsmError("instruction outside .text")
        parts = stmt.split(None, 1)
        mnem = parts[0].lower()
        rest = parts[1] if len(parts) > 1 else ""
        while mnem in _PREFIXES and rest:
            parts = rest.split(None, 1)
            mnem = parts[0].lower()
            rest = parts[1] if len(parts) > 1 else ""
        self.insns.append(_Insn(mnem, rest.strip(), lineno, raw))
        return cur

    def _directive(self, dname, args, cur, stack, lineno):
        if dname in _IGNORED_DIRECTIVES or dname.startswith(".cfi_"):
            if dname == ".intel_syntax" and args and "noprefix" not in args:
                raise AsmError(".intel_syntax prefix is not supported")
            return cur
        if dname == ".att_syntax":
            raise AsmError("AT&T syntax is not supported")
        if dname == ".text":
            return ".text"
        if dname in (".data", ".bss", ".rodata"):
            return self._section(dname)
        if dname in (".section", ".pushsection"):
            a = _split_top(args)
            if dname == ".pushsection":
                stack.append(cur)
            return self._section(a[0], a[1] if len(a) > 1 else "")
        if dname == ".popsection":
            return stack.pop() if stack else ".text"
        if dname == ".previous":
            return cur
        if dname in (".set", ".equ"):
            name, val = _split_top(args)
            self.equ[name] = val
            return cur
        if dname in (".align", ".p2align", ".balign"):
            a = _split_top(args)
            n = eval_expr(a[0], self.equ)
            al = (1 << n) if dname == ".p2align" else n
            if cur != ".text" and al > 1:
                sec = self.sections[cur]
                fill = eval_expr(a[1], self.equ) if len(a) > 1 and a[1] else 0
                pad = (-len(sec)) % al
                sec.extend(bytes([fill & 0xFF]) * pad)
            return cur
        if cur == ".text":
            if dname in _DATA_SIZES or dname in (".float", ".single", ".double",
                                                 ".zero", ".space", ".skip",
                                                 ".ascii", ".asciz", ".string"):
                raise AsmError("data directive %s in .text is not supported" % dname)
            raise AsmError("unsupported directive %s" % dname)
        sec = self.sections[cur]
        if dname in _DATA_SIZES:
            n = _DATA_SIZES[dname]
            for v in _split_top(args):
                self._fixups.append((cur, len(sec), n, v, lineno))
                sec.extend(bytes(n))
        elif dname in (".float", ".single", ".double"):
            code = "<d" if dname == ".double" else "<f"
            import struct
            for v in _split_top(args):
                try:
                    x = float(v)
                except ValueError:
                    x = float(int(v, 0))
                sec.extend(struct.pack(code, x))
        elif dname in (".zero", ".space", ".skip"):
            a = _split_top(args)
            n = eval_expr(a[0], self.equ)
            fill = eval_expr(a[1], self.equ) if len(a) > 1 else 0
            sec.extend(bytes([fill & 0xFF]) * n)
        elif dname in (".ascii", ".asciz", ".string"):
            for v in _split_top(args):
                b = ast.literal_eval("b" + v)
                sec.extend(b + (b"\0" if dname != ".ascii" else b""))
        else:
            raise AsmError("unsupported directive %s" % dname)
        return cur

    # layout ------------------------------------------------------------------
    def _layout(self):
        self.section_addr = {}
        self.section_arrays = {}
        addr = max(DATA_BASE, CODE_BASE + CODE_STRIDE * (len(self.insns) + 16))
        addr = (addr + 0xFFFF) & ~0xFFFF
        for name, data in self.sections.items():
            self.section_addr[name] = addr
            addr += (len(data) + 4096 + 0xFFF) & ~0xFFF
        sym = {}
        for n, i in self.text_labels.items():
            sym[n] = CODE_BASE + CODE_STRIDE * i
        for n, (s, o) in self.data_labels.items():
            sym[n] = self.section_addr[s] + o
        for n, v in self.equ.items():
            sym[n] = eval_expr(v, sym)
        self.symbols = sym
        for sec, off, size, expr, lineno in self._fixups:
            try:
                v = eval_expr(expr, sym)
            except AsmError as e:
                raise AsmError("line %d: %s" % (lineno, e)) from None
            self.sections[sec][off:off + size] = (v & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        for name, data in self.sections.items():
            arr = np.frombuffer(bytes(data), U8).copy()
            if not self.section_writable[name]:
                arr.setflags(write=False)
            self.section_arrays[name] = arr

    def symbol_address(self, name):
        return self.symbols[name]

    def section_array(self, name):
        """The uint8 array backing a data section (e.g. '.data')."""
        return self.section_arrays[name]
