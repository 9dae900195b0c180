"""Why the compile path is what it is: the schedule and ptxas choices, measured side by side.

    python3 -m benchmarks.compile_probe                 # 512 x 512 and 1024 x 1024 at 90%, N = 256
    python3 -m benchmarks.compile_probe --sizes 512     # a quick look

For one random weight per size, every slab of each variant is built with sparsert's own
UnitBuild (no cache), one at a time, and recorded: ptxas CPU seconds summed over the slabs,
registers, spill bytes, FFMA immediates == nnz x vec, and the median / 10th percentile of the
SASS load-to-use distance (instructions between an LDG and the first instruction reading it).
Variants:

* schedule: vec 4 x 16 rows (the earlier default) vs vec 1 x 64 rows (now); both 64 accumulators;
* prefetch: 1 (each row of B loaded right before its FMAs) vs 16 (software-pipelined);
* ptxas: -O3 vs -Ofast-compile=min (backends.cuda.build.PTXAS_OPTIONS) vs -Ofast-compile=max.

Results: benchmarks/results/compile_probe.jsonl (JSON Lines: compile_time.write_doc) and .md (--out).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import statistics
import time

from benchmarks.compile_time import RESULTS, beside, machine, make_weight, random_cases, toolchain, write_doc

VARIANTS = (  # name, schedule options, ptxas options
    ("vec4 x 16 rows, prefetch 1, -O3", dict(vec=4, rows_per_block=16, prefetch=1), ("-O3",)),
    ("vec1 x 64 rows, prefetch 1, -O3", dict(vec=1, rows_per_block=64, prefetch=1), ("-O3",)),
    ("vec1 x 64 rows, prefetch 16, -O3", dict(vec=1, rows_per_block=64, prefetch=16), ("-O3",)),
    ("vec1 x 64 rows, prefetch 1, -Ofc min", dict(vec=1, rows_per_block=64, prefetch=1), ("-Ofc", "min")),
    ("vec1 x 64 rows, prefetch 16, -Ofc min (default)", dict(vec=1, rows_per_block=64, prefetch=16),
     ("-Ofc", "min")),
    ("vec1 x 64 rows, prefetch 16, -Ofc max", dict(vec=1, rows_per_block=64, prefetch=16), ("-Ofc", "max")),
)


def probe(case: dict, opts: dict, ptxas: tuple[str, ...], arch: str) -> dict:
    from sparsert.backends.cuda import BACKENDS, plan
    from sparsert.backends.cuda.build import PtxSlabBuild
    from sparsert.backends.cuda.sass import merge_stats, sass_stats
    from sparsert.options import KernelOptions

    w = make_weight(case)
    s = plan(w.matrix, KernelOptions(n=case["n"], **opts), weight_digest=w.digest(),
             max_slab_nnz=BACKENDS["ptx"].slab_budget())
    t0 = time.perf_counter()
    arts = [PtxSlabBuild(s, u, arch, options=ptxas).build() for u in BACKENDS["ptx"].units(s, arch)]
    wall = time.perf_counter() - t0
    st = merge_stats([sass_stats(a.binary) for a in arts])
    lu = sorted(st.load_use)
    return {
        "nnz": s.nnz, "vec": s.vec, "rows_per_block": s.rows_per_block, "groups": s.groups,
        "prefetch": s.prefetch, "slabs": len(arts), "ptxas": " ".join(ptxas),
        "ptxas_s": sum(a.info["compile_seconds"] for a in arts), "wall_s": wall,
        "registers": max(a.info["registers"] or 0 for a in arts),
        "spill_bytes": sum((a.info["spill_stores"] or 0) + (a.info["spill_loads"] or 0) for a in arts),
        "sass_instructions": st.instructions, "ffma_imm": st.ffma_imm,
        "ffma_imm_ok": st.ffma_imm == s.nnz * s.vec,
        "load_use_median": statistics.median(lu) if lu else None,
        "load_use_p10": lu[len(lu) // 10] if lu else None,
    }


def markdown(doc: dict) -> str:
    lines = [
        "# Compile probe: schedule and ptxas variants", "",
        f"Measured {doc['when']} on `{doc['machine']['cpu']}` ({doc['machine']['cores']} cores, no GPU), "
        f"{doc['toolchain'].get('ptxas')}, arch {doc['arch']}. Command: `{doc['command']}`", "",
        "Every slab built one after another (`ptxas s`: the assembler's time summed over slabs). "
        "`load->use`: SASS instructions from each load of B to its first use, median and 10th "
        "percentile (more = more latency hidden per warp).", "",
        "| case | variant | slabs | ptxas s | nnz/s (1 core) | regs | spill B | SASS instr | ffma ok "
        "| load->use median | p10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        lines.append(
            f"| {r['case']} | {r['variant']} | {r['slabs']} | {r['ptxas_s']:.2f} | {r['nnz'] / r['ptxas_s']:.0f} "
            f"| {r['registers']} | {r['spill_bytes']} | {r['sass_instructions']} | {r['ffma_imm_ok']} "
            f"| {r['load_use_median']} | {r['load_use_p10']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--out", type=Path, default=RESULTS / "compile_probe.jsonl")
    args = ap.parse_args(argv)
    doc = {"when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), "toolchain": toolchain(),
           "arch": args.arch, "command": "python3 -m benchmarks.compile_probe " + " ".join(argv or sys.argv[1:]),
           "results": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for case in random_cases(args.sizes, 0.1, args.n):
        for name, opts, ptxas in VARIANTS:
            rec = probe(case, opts, ptxas, args.arch) | {"case": case["name"], "variant": name}
            doc["results"].append(rec)
            print(f"{case['name']} {name}: {rec['slabs']} slabs, ptxas {rec['ptxas_s']:.2f} s, "
                  f"regs {rec['registers']}, load->use {rec['load_use_median']}", flush=True)
            write_doc(args.out, doc)
            beside(args.out, ".md").write_text(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
