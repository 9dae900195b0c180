"""Slabbed kernels against one kernel, on a GPU (issue 6): same weight and schedule, only the split
into launches differs.

    python3 -m benchmarks.slabs                         # random 1024^2 and 2048^2 at 90%, N = 256
    python3 -m benchmarks.slabs --sizes 4096 --slabs 1 7

For each weight, one kernel per slab count in --slabs (1: a single launch; k: the blocks cut into
k even slabs, launched on forked streams) and one with NVRTC's default budget (16384 FFMAs, many
small slabs), all on the PTX backend. Every variant must equal the single launch bit for bit
before it is timed; then all are timed side by side (sparsert.tune.measure_us: CUDA events,
median, B and C rotated past L2). Results: benchmarks/results/slabs-<time>-<device>.json and .md,
with each variant's time as a ratio to the single launch.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import time

from benchmarks import common
from benchmarks.compile_time import make_weight, random_cases
from sparsert.backends.cuda import NVRTC_SLAB_FMAS as SMALL_SLAB_NNZ  # NVRTC's budget: many launches


def budgets(ffmas: int, counts: list[int]) -> list[tuple[str, int]]:
    """(label, max_slab_nnz) per variant: k even slabs for each k in `counts`, then the small
    NVRTC-size slabs. (plan.split_slabs may need one slab more than k where blocks are coarse.)"""
    out = [(f"{k} slab(s)", max(1, -(-ffmas // k))) for k in counts]
    if ffmas > SMALL_SLAB_NNZ:
        out.append((f"slabs of {SMALL_SLAB_NNZ}", SMALL_SLAB_NNZ))
    return out


def measure_case(case: dict, args) -> dict:
    import cupy

    import sparsert

    w = make_weight(case)
    m, k = w.shape
    rec = {"case": case["name"], "M": m, "K": k, "N": case["n"], "nnz": w.nnz, "variants": []}
    kernels = []
    for label, budget in budgets(w.nnz, args.slabs):
        t0 = time.perf_counter()
        kern = sparsert.compile(w, options=sparsert.KernelOptions(n=case["n"], arch=args.arch,
                                                                  max_slab_nnz=budget))
        kernels.append((label, kern))
        rec["variants"].append({"label": label, "max_slab_nnz": budget, "slabs": len(kern.units),
                                "stamp": common.stamp(getattr(args, "env", None) or {}, kern),
                                "registers": kern.stats.registers, "spills": kern.stats.spill_stores,
                                "compile_s": round(time.perf_counter() - t0, 2)})
        print(f"{case['name']}: {label}: {len(kern.units)} launch(es), compiled in "
              f"{rec['variants'][-1]['compile_s']} s", flush=True)
    l2, free = common.l2_and_free_bytes()
    sets = common.rotation_count(4 * (k + m) * case["n"], l2, free // 4)
    rng = cupy.random.default_rng(args.seed)
    bs = [rng.standard_normal((k, case["n"]), dtype=cupy.float32) for _ in range(sets)]
    cs = [cupy.zeros((m, case["n"]), dtype=cupy.float32) for _ in range(sets)]
    want = kernels[0][1](bs[0])
    for (label, kern), v in zip(kernels, rec["variants"]):
        got = kern(bs[0])
        cupy.cuda.get_current_stream().synchronize()
        v["bit_equal_to_first"] = bool(cupy.array_equal(got, want))
        if not v["bit_equal_to_first"]:
            continue
        meas = common.measure_us(lambda i, kern=kern: kern(bs[i % sets], out=cs[i % sets]),
                                 warmup=args.warmup, repeat=args.repeat)
        v["us"] = meas.median_us
        v["timing"] = meas.as_dict()
    base = rec["variants"][0].get("us")
    for v in rec["variants"]:
        v["vs_first"] = (v["us"] / base) if base and v.get("us") else None
    return rec


def compile_only(args) -> int:
    import sparsert

    arch = args.arch or "sm_90"
    for case in random_cases(args.sizes, args.density, args.n):
        w = make_weight(case)
        for label, budget in budgets(w.nnz, args.slabs):
            kern = sparsert.compile(w, options=sparsert.KernelOptions(n=case["n"], arch=arch,
                                                                      max_slab_nnz=budget))
            print(f"{case['name']}: {label}: {kern.stats.slabs} slab(s), {kern.stats.cached_slabs} "
                  f"cached, {kern.stats.compile_seconds:.1f} s", flush=True)
    return 0


def markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = [f"# Slabbed kernels against one launch ({env.get('device')})", "",
             f"Measured {doc['created']}; driver {env.get('driver')}, CUDA {env.get('cuda_runtime')}, "
             f"sparsert {env.get('sparsert')}. Command: `{doc['command']}`", "",
             "Median of CUDA-event samples (`sparsert.tune.measure_us`); `vs first`: time / the first "
             "variant's (one launch, where --slabs starts at 1); `equal`: output bit-equal to the first.", "",
             "| case | nnz | variant | launches | regs | us | vs first | equal |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["records"]:
        for v in r["variants"]:
            us = f"{v['us']:.2f}" if v.get("us") else "-"
            ratio = f"{v['vs_first']:.3f}" if v.get("vs_first") else "-"
            lines.append(f"| {r['case']} | {r['nnz']} | {v['label']} | {v['slabs']} | {v['registers']} | "
                         f"{us} | {ratio} | {v['bit_equal_to_first']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048], help="square random weights")
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--slabs", type=int, nargs="+", default=[1, 2, 4, 8], help="slab counts to compare")
    ap.add_argument("--arch", default=None)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    ap.add_argument("--backend", choices=("ptx",), default="ptx",
                    help="CUDA backend (the slab split is the PTX backend's; no fallback)")
    ap.add_argument("--compile-only", action="store_true",
                    help="only compile every variant (fills the cache; runs without a GPU)")
    args = ap.parse_args(argv)
    if any(k < 1 for k in args.slabs):
        ap.error("--slabs: counts must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    why = common.force_backend(args.backend)
    if why is not None:
        print(f"benchmarks.slabs: error: {why}", file=sys.stderr)
        return 2
    if args.compile_only:
        return compile_only(args)
    from sparsert.runtime.device import gpu_available

    if not gpu_available():
        print("benchmarks.slabs times kernels: it needs a CUDA GPU", file=sys.stderr)
        return 2
    env = common.environment(args.backend)
    args.env = env
    doc = {"format": 1, "kind": "slabs", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "command": "python3 -m benchmarks.slabs " + " ".join(argv if argv is not None else sys.argv[1:]),
           "environment": env, "records": []}
    path = args.out / f"slabs-{time.strftime('%Y%m%d-%H%M%S')}-{common.slug(env.get('device') or 'gpu')}.json"
    with common.shared_stream():
        for case in random_cases(args.sizes, args.density, args.n):
            doc["records"].append(measure_case(case, args))
            common.write_json_atomic(path, doc)
            path.with_suffix(".md").write_text(markdown(doc))
    print(f"results: {path}\ntable: {path.with_suffix('.md')}")
    unequal = [v["label"] for r in doc["records"] for v in r["variants"] if not v["bit_equal_to_first"]]
    return 1 if unequal else 0


if __name__ == "__main__":
    sys.exit(main())
