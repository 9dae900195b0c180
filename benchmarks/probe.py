"""The first GPU check: load and run three kernels that cover the PTX backend's risky paths.

    python3 -m benchmarks.probe                    # on a GPU: run them against float64
    python3 -m benchmarks.probe --compile-only     # anywhere: compile them, check the paths are covered

The three (each compiled through the cache, so a GPU kit carries their CUBINs):
  sample   a slab of >= 32 block functions: its biggest functions assembled first (the sample),
           the rest in several relocatable objects, linked by nvlink
  refit    a 5x5 convolution whose functions spill under the first register cap: re-assembled
           alone as `<kernel>_b<i>_r<cap>` callees that the entry calls instead
  far      groups=1 with rows of B more than 8 MB apart (load offsets past SASS's 24-bit field)

Exit status: 0 all match float64; 1 a kernel computed wrong numbers (or --compile-only: a path
not covered); 3 the driver refused a CUBIN (load or launch failed): build with the machine's own
ptxas instead (tools/gpukit does that and says so); 2 setup.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import time

import numpy as np
import scipy.sparse as sp

FAR_BYTES = 8 << 20  # SASS load offsets are 24-bit signed: past this the address is computed
TOL = 1e-5  # max |C - C64| / max |C64|; fp32 sums of <= 400 terms stay ~1e-6
EXIT_WRONG, EXIT_SETUP, EXIT_REFUSED = 1, 2, 3


def _random(m: int, k: int, density: float, seed: int) -> sp.csr_matrix:
    a = sp.random(m, k, density=density, random_state=np.random.default_rng(seed), dtype=np.float32,
                  format="csr")
    a.data[:] = np.random.default_rng(seed + 1).standard_normal(a.nnz).astype(np.float32)
    return a


def cases() -> dict[str, dict]:
    """name -> how to build it (kind, weight, geometry, options)."""
    return {
        "sample": {"kind": "spmm", "weight": _random(2048, 512, 0.1, 1), "n": 256, "options": {}},
        "refit": {"kind": "conv", "weight": _random(64, 8 * 25, 0.1, 8).toarray().reshape(64, 8, 5, 5),
                  "input_hw": (12, 12), "padding": 2,
                  "options": {"rows_per_block": 64, "prefetch": 16, "thread_groups": 1}},
        "far": {"kind": "spmm", "weight": _random(256, 4096, 0.05, 3), "n": 1024, "options": {"groups": 1}},
    }


def compile_case(case: dict, arch: str | None):
    import sparsert

    if case["kind"] == "conv":
        return sparsert.compile_conv2d(case["weight"], case["input_hw"], padding=case["padding"],
                                       arch=arch, **case["options"])
    return sparsert.compile(case["weight"], options=sparsert.KernelOptions(
        n=case["n"], arch=arch, **case["options"]))


def coverage(name: str, kernel) -> str | None:
    """None when the kernel takes the path its case is meant to cover, else what is missing."""
    infos = [a.info for a in kernel.artifacts]
    if name == "sample":
        if not any(i.get("sample") for i in infos) or not any(len(i.get("objects") or []) > 1 for i in infos):
            return "no sampled multi-object slab"
    elif name == "refit":
        if not any(i.get("replaced") for i in infos):
            return "no refit (_r<cap>) callee"
    elif name == "far":
        s = kernel.schedule
        if s.groups != 1 or (s.k - 1) * s.n * 4 <= FAR_BYTES:
            return f"groups={s.groups}, last row of B at {(s.k - 1) * s.n * 4} bytes"
    return None


def run_case(name: str, case: dict, kernel) -> dict:
    import cupy

    from sparsert.check.error import relative_error
    from sparsert.check.reference import conv2d_reference, spmm_reference

    rng = np.random.default_rng(7)
    if case["kind"] == "conv":
        x = rng.standard_normal(kernel.input_shape).astype(np.float32)
        ref = conv2d_reference(x.astype(np.float64), case["weight"].astype(np.float64), padding=case["padding"])
    else:
        x = rng.standard_normal((case["weight"].shape[1], case["n"])).astype(np.float32)
        ref = spmm_reference(case["weight"].astype(np.float64), x.astype(np.float64))
    got = kernel(cupy.asarray(x))
    cupy.cuda.get_current_stream().synchronize()
    err = float(relative_error(cupy.asnumpy(got).astype(np.float64).reshape(ref.shape), ref))
    return {"rel_err": err, "ok": bool(err <= TOL)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.probe", description=__doc__.splitlines()[0])
    ap.add_argument("--compile-only", action="store_true", help="compile and check coverage (no GPU)")
    ap.add_argument("--arch", help="compile for this arch (default: the GPU's, else SPARSERT_ARCH)")
    ap.add_argument("--out", type=Path, help="write the results here (JSON)")
    args = ap.parse_args(argv)
    from benchmarks import common

    why = common.force_backend("ptx")
    if why is not None:
        print(f"benchmarks.probe: error: {why}", file=sys.stderr)
        return EXIT_SETUP
    doc: dict = {"kind": "probe", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cases": {}}
    status = 0
    gpu = not args.compile_only
    if gpu:
        from sparsert.runtime.device import gpu_available

        if not gpu_available():
            print("benchmarks.probe needs a CUDA GPU (--compile-only without one)", file=sys.stderr)
            return EXIT_SETUP
        doc["environment"] = common.environment("ptx")
    for name, case in cases().items():
        kernel = compile_case(case, args.arch)
        rec = {"stamp": common.stamp(doc.get("environment") or {}, kernel),
               "slabs": kernel.stats.slabs, "cached_slabs": kernel.stats.cached_slabs,
               "objects": [len(a.info.get("objects") or []) for a in kernel.artifacts],
               "replaced": [a.info.get("replaced") for a in kernel.artifacts]}
        missing = coverage(name, kernel)
        if missing:
            rec["not_covered"] = missing
            status = status or EXIT_WRONG
        if gpu:
            try:
                rec.update(run_case(name, case, kernel))
            except Exception as e:  # noqa: BLE001 - a CUBIN the driver will not load or launch
                rec["refused"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                status = EXIT_REFUSED
            else:
                if not rec["ok"]:
                    status = status if status == EXIT_REFUSED else EXIT_WRONG
        doc["cases"][name] = rec
        print(f"probe {name:7s} {kernel.stats.slabs} slab(s), {kernel.stats.cached_slabs} cached"
              + (f", NOT COVERED: {missing}" if missing else "")
              + (f", REFUSED: {rec['refused']}" if "refused" in rec else "")
              + (f", rel_err {rec['rel_err']:.2e} {'ok' if rec['ok'] else 'WRONG'}" if "rel_err" in rec else ""),
              flush=True)
    doc["status"] = status
    if args.out:
        common.write_json_atomic(args.out, doc)
    return status


if __name__ == "__main__":
    sys.exit(main())
