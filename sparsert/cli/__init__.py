"""`sparsert` command line: compile, inspect, check, tune, prune (one module per command).

Every failure exits non-zero with one line on stderr, `sparsert: error: ...`, no traceback. Exit
codes (README "Command line"): 0 success; 1 `check` ran and the numbers are outside --rtol;
2 bad input or usage (arguments, weight files, options, limits, --out); 3 a toolchain or internal
error (a compiler missing or failing, out of memory, a bug); 130 interrupted (SIGINT, Ctrl-C);
143 terminated (SIGTERM). An interrupt stops the build within seconds: tools are killed, their
temporary folders removed, nothing half-written is left in the cache.
"""

from __future__ import annotations

import argparse
import signal
import sys

from ..check import DEFAULT_RTOL
from ..errors import InputError, OptionsError, SparsertError, WeightError
from ..toolchain.process import cancel
from ..version import __version__
from .bench import add_bench_arguments, bench_main
from .check import cmd_check
from .common import _weight_arguments
from .compile import cmd_compile
from .inspect import cmd_inspect
from .prune import add_prune_arguments, prune_main
from .tune import add_tune_arguments, tune_main

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_TOOLCHAIN, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 3, 130, 143


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line, `sparsert: error: ...`, exit 2 (the
    subcommands' parsers are of this class too)."""

    def error(self, message: str):
        command = self.prog.split()[-1] if " " in self.prog else None
        where = f"{command}: " if command else ""
        hint = f" (see `{self.prog} --help`)"
        self.exit(EXIT_USAGE, f"sparsert: error: {where}{message}{hint}\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so every build winds
    down the same way."""


def _on_sigterm(signum, frame):
    raise Terminated()


# -- main -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sparsert", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sparsert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile weights into kernels; write source, binary, json")
    _weight_arguments(p, many=True)
    p.add_argument("--out", default="generated", help="output folder (default: generated/)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("inspect", help="summary and SASS facts of a compiled kernel (.json) or a weight")
    _weight_arguments(p, n_required=False)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("check", help="run the kernel (GPU, else the same code on the CPU) vs float64")
    _weight_arguments(p)
    p.add_argument("--rtol", type=float,
                   help=f"max relative error accepted (default {DEFAULT_RTOL:g} in float32; in half precision "
                        f"the error bound of the --dtype/--accumulate mode on the inputs, README 'Half precision')")
    p.add_argument("--host", action="store_true", help="run on the CPU even if a GPU is present")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("bench", help="time the CPU target beside dense PyTorch on this machine")
    add_bench_arguments(p)
    p.set_defaults(func=bench_main)

    p = sub.add_parser("tune", help="autotune the schedule on the GPU (or this CPU: --target cpu) and persist the best")
    add_tune_arguments(p)
    p.set_defaults(func=tune_main)

    p = sub.add_parser("prune", help="magnitude-prune a weight or a model")
    add_prune_arguments(p)
    p.set_defaults(func=prune_main)
    return parser


def _error(message: str, code: int) -> int:
    lines = str(message).strip().splitlines() or ["(no message)"]
    more = f" ({len(lines) - 1} more line(s) of tool output: run the Python API to see them)" if len(lines) > 1 else ""
    print(f"sparsert: error: {lines[0]}{more}", file=sys.stderr)
    return code


def exit_code(exc: BaseException) -> int:
    """The documented exit code of an exception that ends a command."""
    if isinstance(exc, Terminated):
        return EXIT_SIGTERM
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_SIGINT
    if isinstance(exc, (InputError, OptionsError, WeightError)):
        return EXIT_USAGE
    return EXIT_TOOLCHAIN


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (main() called from a thread): leave SIGTERM alone
        pass
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: every tool is killed, nothing else starts
        cancel()
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted (Ctrl-C)"
        print(f"sparsert: error: {what}: stopped; tools killed, nothing written to the cache", file=sys.stderr)
        return exit_code(e)
    except SparsertError as e:
        return _error(str(e), exit_code(e))
    except MemoryError:
        return _error("out of memory (a smaller --n or --batch needs less)", EXIT_TOOLCHAIN)
    except Exception as e:  # noqa: BLE001 - the error contract: one line, never a traceback
        return _error(f"internal error: {type(e).__name__}: {e} (please report this)", EXIT_TOOLCHAIN)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
