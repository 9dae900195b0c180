"""The simulated machine: :class:`Program` assembles the text (via
:class:`_Assembler`), pre-decodes every instruction through ``BUILDERS`` into a
closure, and runs a function with the System V calling convention, with
step limits, tracing, profiling and access to the register state.
"""

import sys

import numpy as np

from .assembler import _Assembler
from .constants import _GPR_NAMES, F32, M64, RET_SENTINEL, RSP, STACK_TOP, U8, U32
from .decoder import Decoder, _State
from .errors import AsmError, MemoryFault, SimError, StepLimitExceeded
from .memory import Memory
from .operands import _split_top, parse_operand
from .registry import BUILDERS


class Program(_Assembler):
    """Parsed and pre-decoded assembly text.

    Program(text, on_unknown="error")  -- on_unknown="defer" turns unknown or
    unsupported instructions into a runtime error raised only when executed.
    """

    def __init__(self, text, on_unknown="error", stack_size=1 << 20):
        if on_unknown not in ("error", "defer"):
            raise ValueError("on_unknown must be 'error' or 'defer'")
        self.stack_size = stack_size
        self.insns = []
        self.text_labels = {}            # name -> instruction index
        self.sections = {}               # name -> bytearray
        self.section_writable = {}
        self.data_labels = {}            # name -> (section, offset)
        self.equ = {}
        self._fixups = []                # (section, offset, size, expr, lineno)
        self._parse(text)
        self._layout()
        self.st = _State()
        self.steps = 0
        self.profile = None
        self._decode(on_unknown)

    # decoding ----------------------------------------------------------------
    def _decode(self, on_unknown):
        d = Decoder(self.st, self.symbols, self.text_labels)
        d.ncode = len(self.insns)
        code = []
        for idx, ins in enumerate(self.insns):
            d.mnemonic = ins.mnemonic
            try:
                b = BUILDERS.get(ins.mnemonic)
                if b is None:
                    raise AsmError("unknown instruction %r" % ins.mnemonic)
                ops = [parse_operand(o) for o in _split_top(ins.operands)] \
                    if ins.operands else []
                fn = b(d, ops, idx)
            except AsmError as e:
                msg = "line %d: %s: %s" % (ins.lineno, e, ins.text)
                if on_unknown == "error":
                    raise AsmError(msg) from None
                fn = self._deferred(msg)
            code.append(fn)

        def fell_off():
            raise SimError("execution ran past the end of the text")
        code.append(fell_off)
        self.code = code

    @staticmethod
    def _deferred(msg):
        def f():
            raise AsmError(msg)
        return f

    # running -------------------------------------------------------------------
    def call(self, symbol, args=(), memory=None, max_steps=10_000_000, trace=False,
             profile=False):
        """Call ``symbol`` with the System V ABI and return rax (unsigned 64-bit).

        args: ints (-> rdi, rsi, rdx, rcx, r8, r9, then stack) and floats
        (-> xmm0..xmm7 low lane).  trace: True prints each executed instruction
        to stderr; a callable is called as trace(step, lineno, text, program).
        profile=True fills ``self.profile`` (mnemonic -> count).
        """
        if symbol not in self.text_labels:
            raise SimError("no function %r in the text" % symbol)
        mem = memory if memory is not None else Memory()
        self.memory = mem
        for name, arr in self.section_arrays.items():
            mem._attach(("section", id(self), name), arr, self.section_addr[name],
                        self.section_writable[name], "section " + name)
        if ("stack",) not in mem._attached:
            stk = np.zeros(self.stack_size, U8)
            mem._attach(("stack",), stk, STACK_TOP - self.stack_size, True, "stack")
        st = self.st
        st.reset()
        st.mem = mem
        R = st.R
        iregs = [7, 6, 2, 1, 8, 9]
        stack_args = []
        nx = 0
        for a in args:
            if isinstance(a, (float, np.floating)):
                if nx >= 8:
                    raise SimError("more than 8 float arguments")
                st.V[nx, 0] = np.array(a, F32).view(U32)
                nx += 1
            else:
                v = int(a) & M64
                if iregs:
                    R[iregs.pop(0)] = v
                else:
                    stack_args.append(v)
        sp = (STACK_TOP - 64 - 8 * len(stack_args)) & ~0xF
        for i, v in enumerate(stack_args):
            mem.write_int(sp + 8 * i, 8, v)
        sp -= 8
        mem.write_int(sp, 8, RET_SENTINEL)
        R[RSP] = sp
        pc = self.text_labels[symbol]
        code = self.code
        n = 0
        with np.errstate(all="ignore"):
            if trace or profile:
                n = self._run_slow(pc, max_steps, trace, profile)
            else:
                try:
                    while True:
                        r = code[pc]()
                        n += 1
                        if r is None:
                            pc += 1
                        elif r < 0:
                            break
                        else:
                            pc = r
                        if n >= max_steps:
                            raise StepLimitExceeded("step limit %d reached" % max_steps)
                except SimError as e:
                    self._annotate(e, pc, n)
                    raise
        self.steps = n
        return R[0]

    def _annotate(self, e, pc, n):
        self.steps = n
        if pc < len(self.insns) and not str(e).startswith("line "):
            ins = self.insns[pc]
            e.args = ("%s [executing line %d: %s]" % (e, ins.lineno, ins.text),) \
                + e.args[1:]
            if isinstance(e, MemoryFault):
                e.lineno, e.instruction = ins.lineno, ins.text

    def _run_slow(self, pc, max_steps, trace, profile):
        from collections import Counter
        prof = Counter() if profile else None
        self.profile = prof
        code = self.code
        n = 0
        try:
            while True:
                if pc < len(self.insns):
                    ins = self.insns[pc]
                    if prof is not None:
                        prof[ins.mnemonic] += 1
                    if trace is True:
                        print("%8d  L%-5d %s" % (n, ins.lineno, ins.text), file=sys.stderr)
                    elif trace:
                        trace(n, ins.lineno, ins.text, self)
                r = code[pc]()
                n += 1
                if r is None:
                    pc += 1
                elif r < 0:
                    break
                else:
                    pc = r
                if n >= max_steps:
                    raise StepLimitExceeded("step limit %d reached" % max_steps)
        except SimError as e:
            self._annotate(e, pc, n)
            raise
        return n

    # state inspection -----------------------------------------------------------
    def gpr(self, name):
        i, w = _GPR_NAMES[name.lower()]
        return self.st.R[i] & ((1 << w) - 1)

    def vreg(self, n, dtype=np.float32):
        """Copy of zmm<n> (16 lanes) viewed as dtype."""
        return self.st.V[n].copy().view(dtype)

    def kreg(self, n):
        return self.st.K[n]
