"""python3 -m tools.gpukit build|dryrun|run [...]"""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("build", "dryrun", "run"):
        print("usage: python3 -m tools.gpukit build|dryrun|run [--help]", file=sys.stderr)
        return 2
    if argv[0] == "run":
        from .run import main as run_main

        return run_main(argv[1:])
    from .kit import build_main, dryrun_main

    return (build_main if argv[0] == "build" else dryrun_main)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
