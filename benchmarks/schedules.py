"""Schedule A/B on the GPU: the same weight under schedule variants the SASS points at.

    python3 -m benchmarks.schedules                      # the default problems and variants, N x 1
    python3 -m benchmarks.schedules --compile-only --arch sm_90   # fill the cache, no GPU

Variants (sparsert.KernelOptions overrides against the default schedule): more threads along N
with one thread group (threads_x 64 / 128, groups 1: one warp, no divergent groups at N < 32),
fewer rows per block (16 / 32: more CTAs where the default grid fills a fraction of one wave),
no split-K (groups 1: no partial-sum exchange where K is small) and the prefetch depth (8 / 32
rows of B in flight). Each variant is checked against cuBLAS (TF32 off) before it is timed
(sparsert.tune.measure_us, B and C rotated past the L2); a variant the planner refuses is
recorded with its reason. Results: benchmarks/results/schedules-<time>-<device>.json and .md.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import time

from benchmarks import common
from benchmarks import spmm as spmm_bench

VARIANTS = {
    "default": {},
    "tx64_g1": {"threads_x": 64, "groups": 1},
    "tx128_g1": {"threads_x": 128, "groups": 1},
    "rpb16": {"rows_per_block": 16},
    "rpb32": {"rows_per_block": 32},
    "g1": {"groups": 1},
    "pf8": {"prefetch": 8},
    "pf32": {"prefetch": 32},
}
# small K (p2, p6), small grids at batch 1 (p1, p5, p7), a Transformer layer (p20), the ones an
# estimate says may lose (p5, p7, p20)
PROBLEMS = r"^p(1|2|5|6|7|20)-s90$"


def variant_options(n: int, arch: str | None, overrides: dict):
    import sparsert

    return sparsert.KernelOptions(n=n, arch=arch, **overrides)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.schedules", description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=PROBLEMS, help=f"problems (regex over spmm_dl names; default {PROBLEMS})")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--batches", type=int, nargs="+", default=[1])
    ap.add_argument("--arch")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--tol", type=float, default=spmm_bench.DEFAULT_TOL)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    ap.add_argument("--backend", choices=("ptx", "nvrtc"), default="ptx")
    ap.add_argument("--time-budget", type=float, metavar="S", help="start no new problem after S seconds")
    ap.add_argument("--compile-only", action="store_true")
    return ap.parse_args(argv)


def problems(args):
    data = common.data_dir()
    found = spmm_bench.read_problems(data / "problems" / "spmm_dl.csv")
    return spmm_bench.select(found, only=args.only, sparsity=None, limit=None), data


def measure_problem(p, w, batch: int, args, env: dict) -> dict:
    import cupy

    import sparsert

    n = p.n * batch
    rec = {"problem": p.name, "M": p.m, "K": p.k, "N": n, "batch": batch, "nnz": w.nnz, "variants": {}}
    kernels = {}
    for name in args.variants:
        try:
            kernels[name] = sparsert.compile(w, options=variant_options(n, args.arch, VARIANTS[name]))
        except sparsert.SparsertError as e:
            rec["variants"][name] = {"refused": str(e).splitlines()[0]}
    ops = spmm_bench.Operands.build(w, n, None, seed=args.seed)
    s = ops.sets
    ref = cupy.matmul(ops.a, ops.b[0])
    cub = common.measure_us(lambda i: cupy.matmul(ops.a, ops.b[i % s], out=ops.c[i % s]),
                            warmup=args.warmup, repeat=args.repeat)
    rec["cublas_us"] = cub.median_us
    for name, kern in kernels.items():
        v = {"options": VARIANTS[name], "stamp": common.stamp(env, kern), "registers": kern.stats.registers,
             "cached_slabs": kern.stats.cached_slabs, "blocks": len(kern.schedule.blocks)}
        try:
            for c in ops.c:
                c.fill(float("nan"))
            kern(ops.b[0], out=ops.c[0])
            cupy.cuda.get_current_stream().synchronize()
            v["rel_err"] = spmm_bench.max_rel_err(ops.c[0], ref)
            if v["rel_err"] <= args.tol:
                m = common.measure_us(lambda i, k=kern: k(ops.b[i % s], out=ops.c[i % s]),
                                      warmup=args.warmup, repeat=args.repeat)
                v["us"] = m.median_us
                v["vs_cublas"] = cub.median_us / m.median_us
            else:
                v["failed"] = f"max relative error {v['rel_err']:.2e} vs cuBLAS > {args.tol:g}"
        except Exception as e:  # noqa: BLE001 - one variant's CUDA error
            v["failed"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        rec["variants"][name] = v
    base = rec["variants"].get("default", {}).get("us")
    for v in rec["variants"].values():
        if base and v.get("us"):
            v["vs_default"] = base / v["us"]
    return rec


def markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = [f"# Schedule A/B ({env.get('device')})", "",
             (f"Measured {doc['created']}; driver {env.get('driver')}, CUDA {env.get('cuda_runtime')}, "
              f"backend {(env.get('toolchain') or {}).get('backend')} ({(env.get('toolchain') or {}).get('ptxas')})."), "",
             "`x default` = default time / variant time (> 1: the variant is faster); `x cuBLAS` likewise.", "",
             "| problem | N | variant | us | x default | x cuBLAS | regs | blocks |", "|---|---|---|---|---|---|---|---|"]
    for r in doc["records"]:
        for name, v in r["variants"].items():
            us = f"{v['us']:.2f}" if v.get("us") else (v.get("refused") or v.get("failed") or "-")[:60]
            lines.append(f"| {r['problem']} | {r['N']} | {name} | {us} | {v.get('vs_default', 0):.2f} | "
                         f"{v.get('vs_cublas', 0):.2f} | {v.get('registers', '-')} | {v.get('blocks', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    why = common.force_backend(args.backend)
    if why is not None:
        print(f"benchmarks.schedules: error: {why}", file=sys.stderr)
        return 2
    import sparsert

    found, data = problems(args)
    if args.compile_only:
        arch = args.arch or "sm_90"
        for p in found:
            w = spmm_bench.make_weight(p, shared=data, seed=args.seed)
            for batch in args.batches:
                for name in args.variants:
                    try:
                        k = sparsert.compile(w, options=variant_options(p.n * batch, arch, VARIANTS[name]))
                    except sparsert.SparsertError as e:
                        print(f"{p.name} N={p.n * batch} {name}: refused: {str(e).splitlines()[0]}")
                        continue
                    print(f"{p.name} N={p.n * batch} {name}: {k.stats.slabs} slab(s), "
                          f"{k.stats.cached_slabs} cached", flush=True)
        return 0
    from sparsert.runtime.device import gpu_available

    if not gpu_available():
        print("benchmarks.schedules needs a CUDA GPU (--compile-only without one)", file=sys.stderr)
        return 2
    stream = common.shared_stream()
    env = common.environment(args.backend)
    env["tf32"] = common.disable_tf32()
    deadline = common.Deadline(args.time_budget)
    doc = {"kind": "schedules", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "command": " ".join(sys.argv), "environment": env, "variants": VARIANTS, "records": []}
    path = args.out / f"schedules-{time.strftime('%Y%m%d-%H%M%S')}-{common.slug(env.get('device') or 'gpu')}.json"
    with stream:
        for p in found:
            if deadline.expired():
                doc["cut"] = f"--time-budget {args.time_budget:g} s spent before {p.name}"
                break
            w = spmm_bench.make_weight(p, shared=data, seed=args.seed)
            for batch in args.batches:
                rec = measure_problem(p, w, batch, args, env)
                doc["records"].append(rec)
                common.write_json_atomic(path, doc)
                path.with_suffix(".md").write_text(markdown(doc))
                print(" ".join(f"{n}={v.get('vs_default', 0):.2f}" for n, v in rec["variants"].items()),
                      rec["problem"], flush=True)
    common.write_json_atomic(path, doc)
    path.with_suffix(".md").write_text(markdown(doc))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
