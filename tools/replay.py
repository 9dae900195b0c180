"""Process replay: prove a refactor changed no generated code, or name exactly what it changed.

    python -m tools.replay record [--store tools/replay.json]   # hash every generated source
    python -m tools.replay compare [--store tools/replay.json]  # re-render, report differences

The corpus (fixed, deterministic): every DLMC pattern at N = 256, the spmm_dl problems at their
N, the ResNet-50 3x3 conv table through the virtual im2col, and small random cases covering
bias / ReLU / residual, vec 1/2/4, groups 1-4, slabs, batches and conv geometries. For each case
it renders every artifact a backend prints from the schedule (CUDA source, HIP source, the PTX
objects of each slab in their default layout, and the x86 assembly of the CPU target for AVX2 and
AVX-512) and stores
one sha256 per artifact. `compare` exits 1 when any hash differs or a case is missing, listing
them; new cases (a new artifact kind) are reported as added, not as failures.

Rendering goes through `_artifacts()` only, the one place that knows the package's API.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STORE = REPO / "tools" / "replay.json"
DLMC_N = 256


def data_root() -> Path:
    """SPARSERT_DATA, else ../shared beside the checkout, else /work/shared."""
    env = os.environ.get("SPARSERT_DATA")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared", Path("/work/shared")]:
        if (candidate / "dlmc").is_dir():
            return candidate
    raise SystemExit("replay: the shared data folder (dlmc/, problems/) was not found; set SPARSERT_DATA")


# -- the corpus ---------------------------------------------------------------------------------
def _random(m: int, k: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    a = sp.random(m, k, density=density, format="csr", random_state=rng, dtype=np.float64)
    a.data = rng.standard_normal(a.nnz)
    return a.astype(np.float32)


def corpus(root: Path) -> list[dict]:
    """Case descriptions: plain data, so worker processes rebuild each case themselves."""
    cases = []
    for path in sorted((root / "dlmc").rglob("*.smtx")):
        cases.append({"id": f"dlmc/{path.relative_to(root / 'dlmc')}", "smtx": str(path), "n": DLMC_N})
    with open(root / "problems" / "spmm_dl.csv") as f:
        for row in csv.DictReader(f):
            pct = round(100 * float(row["sparsity"]))
            cases.append({"id": f"spmm_dl/p{row['problem']}_{pct}", "random": [int(row["M"]), int(row["K"]),
                          1 - float(row["sparsity"]), int(row["problem"]) * 100 + pct], "n": int(row["N"])})
    with open(root / "problems" / "conv3x3_dl.csv") as f:
        for row in csv.DictReader(f):
            c, hw = int(row["in_channels"]), int(row["image_hw"])
            cases.append({"id": f"conv3x3_dl/p{row['problem']}",
                          "random": [int(row["out_channels"]), c * 9, 1 - float(row["sparsity"]),
                                     100 + int(row["problem"])],
                          "conv": {"c_in": c, "h": hw, "w": hw, "kh": 3, "kw": 3, "stride": [1, 1],
                                   "padding": [1, 1], "dilation": [1, 1]}})
    small = [  # (m, k, density, n, options)
        (37, 53, 0.2, 40, {}), (64, 96, 0.1, 33, {"relu": True}), (50, 70, 0.15, 64, {"bias": True}),
        (40, 64, 0.2, 31, {"residual": True, "relu": True, "bias": True}),
        (64, 128, 0.1, 64, {"vec": 2}), (64, 128, 0.1, 128, {"vec": 4, "relu": True}),
        (33, 200, 0.1, 17, {"groups": 2}), (48, 300, 0.1, 20, {"groups": 3, "bias": True}),
        (64, 512, 0.05, 48, {"groups": 4, "residual": True}),
        (96, 256, 0.1, 64, {"vec": 2, "groups": 2, "relu": True}),
        (128, 128, 0.1, 50, {"max_slab_nnz": 300}), (200, 64, 0.2, 40, {"max_slab_nnz": 500, "vec": 2}),
        (70, 90, 0.1, 1, {}), (16, 16, 1.0, 8, {"prefetch": 4}), (64, 64, 0.1, 96, {"threads_x": 16, "rows_per_block": 8}),
        (30, 40, 0.3, 24, {"batch": 3, "batch_stride_b": 960, "batch_stride_c": 720}),
        # half precision (issue 15): both dtypes, fp32 and packed arithmetic, every epilogue
        (40, 64, 0.2, 31, {"dtype": "float16", "residual": True, "relu": True, "bias": True}),
        (40, 64, 0.2, 33, {"dtype": "bfloat16", "residual": True, "relu": True, "bias": True}),
        (64, 96, 0.1, 34, {"dtype": "float16", "accumulate": "float16", "vec": 2, "bias": True}),
        (64, 96, 0.1, 38, {"dtype": "bfloat16", "accumulate": "bfloat16", "vec": 2, "residual": True}),
    ]
    for i, (m, k, d, n, opts) in enumerate(small):
        cases.append({"id": f"small/{i:02d}", "random": [m, k, d, 1000 + i], "n": n, "opts": opts})
    geoms = [  # conv geometries: (c_out, c_in, h, w, kh, kw, stride, padding, dilation, extra options)
        (16, 8, 9, 11, 3, 3, 1, 1, 1, {}), (12, 6, 10, 10, 3, 3, 2, 1, 1, {"relu": True, "bias": True}),
        (8, 4, 12, 12, 5, 5, 1, 4, 2, {"residual": True}), (10, 5, 7, 9, 1, 3, 1, 0, 1, {"groups": 2}),
        (16, 16, 6, 6, 3, 3, 1, 1, 1, {"batch": 2}),
    ]
    for i, (co, ci, h, w, kh, kw, st, pa, di, opts) in enumerate(geoms):
        cases.append({"id": f"conv/{i:02d}", "random": [co, ci * kh * kw, 0.3, 2000 + i], "opts": opts,
                      "conv": {"c_in": ci, "h": h, "w": w, "kh": kh, "kw": kw, "stride": [st, st],
                               "padding": [pa, pa], "dilation": [di, di]}})
    return cases


# -- rendering (the package's API is used here only) ----------------------------------------------
def _matrix(case: dict) -> sp.csr_matrix:
    from sparsert.frontend.weights import load_weight

    if "smtx" in case:
        return load_weight(case["smtx"]).matrix
    m, k, d, seed = case["random"]
    return load_weight(_random(m, k, d, seed)).matrix


def _artifacts(case: dict) -> dict[str, str]:
    """{artifact name: generated text} for one case."""
    from sparsert.backends.cuda import PTX_SLAB_FMAS as DEFAULT_PTX_MAX_SLAB_NNZ
    from sparsert.backends.cuda import plan
    from sparsert.backends.cuda.ptx_objects import render_ptx
    from sparsert.backends.source.render import render
    from sparsert.ir.schedule import ConvGeometry
    from sparsert.options import KernelOptions

    a = _matrix(case)
    opts = dict(case.get("opts", {}))
    plan_kw = {}
    if opts.pop("bias", False):
        plan_kw["bias"] = np.linspace(-1, 1, a.shape[0]).astype(np.float32)
    for key in ("batch", "batch_stride_b", "batch_stride_c"):
        if key in opts:
            plan_kw[key] = opts.pop(key)
    budget = opts.pop("max_slab_nnz", DEFAULT_PTX_MAX_SLAB_NNZ)
    n = case.get("n")
    if "conv" in case:
        g = case["conv"]
        geo = ConvGeometry(c_in=g["c_in"], h=g["h"], w=g["w"], kh=g["kh"], kw=g["kw"],
                           stride=tuple(g["stride"]), padding=tuple(g["padding"]),
                           dilation=tuple(g["dilation"]))
        n = geo.n
        plan_kw["conv"] = geo
        batch = opts.pop("batch", 1)
        plan_kw.update(batch=batch, batch_stride_b=g["c_in"] * g["h"] * g["w"],
                       batch_stride_c=a.shape[0] * n)
    s = plan(a, KernelOptions(n=n, **opts), weight_digest=f"replay:{case['id']}", max_slab_nnz=budget,
             **plan_kw)
    out = {}
    for unit in render(s, "cuda"):
        out[f"cuda/{unit.index}"] = unit.source
    for unit in render(s, "hip"):
        out[f"hip/{unit.index}"] = unit.source
    for unit in render_ptx(s, "sm_90"):
        out[f"ptx/{unit.index}"] = unit.source
    out.update(_cpu_artifacts(a, n, opts, plan_kw, case))
    return out


_GPU_ONLY = ("threads_x", "groups", "prefetch", "max_slab_nnz")


def _cpu_artifacts(a, n: int, opts: dict, plan_kw: dict, case: dict) -> dict[str, str]:
    """The CPU target's x86 assembly for both ISAs, under its own parameter choice (register
    blocks; GPU-only schedule options leave a case out; vec means vectors of N there)."""
    from sparsert.backends.cpu.emit import emit_parts
    from sparsert.backends.cpu.lower import lower
    from sparsert.backends.cpu.params import emit_config, parameters_for
    from sparsert.ir.plan import plan
    from sparsert.options import KernelOptions

    if any(key in opts for key in _GPU_ONLY):
        return {}
    out = {}
    for isa in ("avx2", "avx512"):
        o = KernelOptions(n=n, target="cpu", arch=isa, **{k: v for k, v in opts.items() if k != "rows_per_block"})
        if o.packed and (o.accumulate != "bfloat16" or isa != "avx512"):
            continue  # the CPU's only packed half arithmetic: AVX512-BF16's vdpbf16ps
        s = plan(a, o, parameters=parameters_for(isa), weight_digest=f"replay:{case['id']}", max_slab_nnz=1 << 62,
                 **plan_kw)
        cfg = emit_config(isa, s.rows_per_block, s.vec, s.n, dtype=s.dtype, pairs=s.packed)
        out[f"x86-{isa}/0"] = "".join(emit_parts(lower(s), cfg, 1))
    return out


# Identity stamps, not code: the PTX header names the hash of the emitter's own source files, which
# changes with any edit to them. Replay compares what the stamp is attached to.
_STAMPS = (re.compile(r"\(PTX emitter [0-9a-f]{16}\)"), "(PTX emitter <digest>)"),


def normalise(text: str) -> str:
    for pattern, placeholder in _STAMPS:
        text = pattern.sub(placeholder, text)
    return text


def _hash_case(case: dict) -> tuple[str, dict[str, str]]:
    try:
        arts = _artifacts(case)
    except Exception as exc:  # recorded as such: a case that starts or stops failing is a change
        return case["id"], {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    return case["id"], {name: hashlib.sha256(normalise(text).encode()).hexdigest() for name, text in sorted(arts.items())}


def run(cases: list[dict], jobs: int) -> dict[str, dict[str, str]]:
    # biggest first, so the pool's two workers finish together
    order = sorted(cases, key=lambda c: -(Path(c["smtx"]).stat().st_size if "smtx" in c else 0))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return dict(sorted(pool.map(_hash_case, order, chunksize=4), key=lambda item: item[0]))


def compare(old: dict[str, dict[str, str]], new: dict[str, dict[str, str]]) -> tuple[list[str], list[str]]:
    """(differences, additions) between two records, one line each."""
    diffs, added = [], []
    for cid in sorted(set(old) | set(new)):
        if cid not in new:
            diffs.append(f"{cid}: missing now")
            continue
        if cid not in old:
            added.append(f"{cid}: new case")
            continue
        for art in sorted(set(old[cid]) | set(new[cid])):
            a, b = old[cid].get(art), new[cid].get(art)
            if a == b:
                continue
            if a is None:
                added.append(f"{cid} {art}: new artifact")
            elif b is None:
                diffs.append(f"{cid} {art}: no longer generated")
            else:
                diffs.append(f"{cid} {art}: differs" + (f" ({a} -> {b})" if art == "error" else ""))
    return diffs, added


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.replay", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("record", "compare"))
    p.add_argument("--store", type=Path, default=DEFAULT_STORE)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--only", help="substring of case ids to run (compare only checks those)")
    args = p.parse_args(argv)
    cases = corpus(data_root())
    if args.only:
        cases = [c for c in cases if args.only in c["id"]]
    t0 = time.perf_counter()
    record = run(cases, args.jobs)
    seconds = time.perf_counter() - t0
    artifacts = sum(len(v) for v in record.values())
    if args.action == "record":
        args.store.write_text(json.dumps(record, indent=0, sort_keys=True) + "\n")
        print(f"replay: recorded {len(record)} cases, {artifacts} artifacts in {seconds:.0f} s -> {args.store}")
        return 0
    old = json.loads(args.store.read_text())
    if args.only:
        old = {k: v for k, v in old.items() if args.only in k}
    diffs, added = compare(old, record)
    for line in added:
        print(f"  added: {line}")
    for line in diffs:
        print(f"  CHANGED: {line}")
    same = artifacts - len([d for d in diffs if "differs" in d]) - len([a for a in added if "new artifact" in a])
    print(f"replay: {len(record)} cases, {artifacts} artifacts in {seconds:.0f} s: "
          f"{len(diffs)} changed, {len(added)} added, {same} byte-identical")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
