"""The GPU run's stages, in order of value, and how the run's time budget is dealt to them.

Each stage has the commands the GPU machine runs (`run`) and the ones that fill the kit's kernel
cache here, without a GPU (`compile`): the same benchmark with `--compile-only`, the same
problems, so every kernel the run launches is compiled here. `{results}` in a command is the
folder the run packs into $OUT; `{budget}` the seconds the benchmark may start new work in
(its own `--time-budget`, a little under the stage's timeout, so it ends with complete results
before the hard kill).
"""

from __future__ import annotations

from dataclasses import dataclass, field

ARCH = "sm_90"  # the H100 / H200
TOTAL_BUDGET_S = 480  # the whole run: 8 minutes of the session's 15 (start-up and transfers apart)
COMMAND_LIMIT_S = 600  # the device tool's limit for one command
WRAP_UP_S = 15  # kept back from a benchmark's --time-budget for its report (tables, plots)


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    budget_s: int  # its share of the total (unused time is passed on to the next stages)
    min_s: int  # skipped when less than this is left
    run: tuple[tuple[str, ...], ...]
    compile: tuple[tuple[str, ...], ...] = field(default=())


PY = "python3"
SPMM = (PY, "-m", "benchmarks.spmm")
SCHED = (PY, "-m", "benchmarks.schedules")
SLABS_ARGS = ("--sizes", "1024", "--slabs", "1", "2", "4", "8")
RESNET = ("--models", "resnet50", "--sparsities", "0.9", "--batches", "1", "--quiet")
NCU_TARGET = (*SCHED, "--only", "^p(1|12|20)-s90$", "--variants", "default", "--repeat", "1",
              "--warmup", "0", "--out", "{results}/ncu-target")

STAGES: tuple[Stage, ...] = (
    Stage("probe", "three risky CUBINs (sample, refit callee, offsets past 8 MB) vs float64", 40, 15,
          run=((PY, "-m", "benchmarks.probe", "--out", "{results}/probe.json"),),
          compile=((PY, "-m", "benchmarks.probe", "--compile-only", "--arch", ARCH),)),
    Stage("pytest_gpu", "pytest -m gpu", 70, 30,
          run=((PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests",
                "--junitxml={results}/pytest-gpu.xml"),)),
    Stage("spmm_x1", "spmm_dl at N x 1 vs cuBLAS (TF32 off), cuSPARSE, torch", 110, 30,
          run=((*SPMM, "--batches", "1", "--repeat", "30", "--warmup", "5", "--time-budget", "{budget}",
                "--out", "{results}"),),
          compile=((*SPMM, "--compile-only", "--arch", ARCH, "--batches", "1"),)),
    # Half precision (issue 15): float16 with fp32 and with packed (HFMA2) arithmetic, then
    # bfloat16, on the first problems at 90%, vs cuBLAS HGEMM (tensor cores on / off), cuSPARSE
    # and torch in the dtype. Compiled there, not into the kit: the kit must stay under the
    # device tool's 64 MiB carry, and these kernels take seconds on its 16 cores.
    Stage("spmm_half", "spmm_dl (90%, first problems) in float16 / packed float16 / bfloat16 vs cuBLAS HGEMM", 50, 25,
          run=tuple((*SPMM, "--batches", "1", "--sparsity", "0.9", "--limit", "6", *mode, "--repeat", "20",
                     "--warmup", "3", "--time-budget", "{budget}", "--out", "{results}")
                    for mode in (("--dtype", "float16"), ("--dtype", "float16", "--accumulate", "float16"),
                                 ("--dtype", "bfloat16")))),
    Stage("schedules", "schedule A/B: threads_x, rows_per_block, groups, prefetch", 45, 25,
          run=((*SCHED, "--time-budget", "{budget}", "--out", "{results}"),),
          compile=((*SCHED, "--compile-only", "--arch", ARCH),)),
    Stage("slabs", "slabs vs one launch", 20, 15,
          run=((PY, "-m", "benchmarks.slabs", *SLABS_ARGS, "--repeat", "30", "--out", "{results}"),),
          compile=((PY, "-m", "benchmarks.slabs", *SLABS_ARGS, "--compile-only", "--arch", ARCH),)),
    Stage("spmm_batched", "spmm_dl at N x 8 / x 32 (90%)", 45, 25,
          run=((*SPMM, "--batches", "8", "32", "--sparsity", "0.9", "--repeat", "20", "--warmup", "3",
                "--methods", "sparsert", "cublas", "cusparse", "--time-budget", "{budget}", "--out", "{results}"),),
          compile=((*SPMM, "--compile-only", "--arch", ARCH, "--batches", "8", "32", "--sparsity", "0.9"),)),
    Stage("conv", "the conv table (conv3x3_dl.csv, batch 1) vs cuDNN", 35, 20,
          run=((PY, "-m", "benchmarks.conv", "--suite", "csv", "--batches", "1", "--repeat", "30",
                "--warmup", "5", "--time-budget", "{budget}", "--out", "{results}"),),
          compile=((PY, "-m", "benchmarks.conv", "--suite", "csv", "--batches", "1", "--compile-only",
                    "--arch", ARCH),)),
    Stage("resnet50", "ResNet-50 (transformers config, random weights, 90%) vs dense PyTorch, batch 1", 45, 30,
          # not compiled into the kit: ~2.3M nonzeros would pass its 60 MiB, and its random weights
          # depend on the torch / transformers versions there; compiled there, on 16 cores
          run=((PY, "benchmarks/models.py", *RESNET, "--iters", "30", "--warmup", "5", "--no-layers",
                "--out", "{results}/models-resnet50.json"),)),
    Stage("ncu", "ncu on three kernels: speed of light, warp stalls, occupancy", 20, 20,
          run=(("ncu", "--clock-control", "none", "--kernel-name", "regex:sparsert", "--launch-count", "3",
                "--section", "SpeedOfLight", "--section", "WarpStateStats", "--section", "Occupancy",
                "--section", "LaunchStats", "--metrics",
                "smsp__pcsamp_warps_issue_stalled_no_instructions,smsp__average_warp_latency_issue_stalled_no_instruction",
                "--csv", "--page", "details", "--log-file", "{results}/ncu.csv", *NCU_TARGET),)),
)


def by_name(names) -> tuple[Stage, ...]:
    known = {s.name: s for s in STAGES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return tuple(known[n] for n in names)


class Budget:
    """Deals `total_s` to stages in order. A stage may run for its own share plus whatever the
    stages before it left unused, never past the total: the run ends inside `total_s` whatever
    each stage does (a stage that overruns is killed at its timeout)."""

    def __init__(self, total_s: float):
        self.total_s = float(total_s)
        self.spent_s = 0.0
        self.banked_s = 0.0

    @property
    def left_s(self) -> float:
        return max(0.0, self.total_s - self.spent_s)

    def timeout(self, stage: Stage, *, last: bool = False) -> float | None:
        """Seconds this stage may run (None: skip it, too little time left). The last stage gets
        everything left."""
        allowed = self.left_s if last else min(stage.budget_s + self.banked_s, self.left_s)
        return allowed if allowed >= stage.min_s else None

    def spend(self, stage: Stage, used_s: float, allowed_s: float | None) -> None:
        self.spent_s += used_s
        if allowed_s is not None:  # what it left unused passes on (a skipped stage passes nothing)
            self.banked_s = max(0.0, allowed_s - used_s)
        self.banked_s = min(self.banked_s, self.left_s)


def benchmark_budget(timeout_s: float) -> int:
    """The `--time-budget` of a benchmark that may run `timeout_s`: time for its report kept back."""
    return max(1, int(timeout_s - max(WRAP_UP_S, 0.15 * timeout_s)))


def fill(command: tuple[str, ...], *, results: str, budget: int, python: str) -> list[str]:
    out = [python if (i == 0 and a == PY) else a for i, a in enumerate(command)]
    return [a.replace("{results}", results).replace("{budget}", str(budget)) for a in out]


def plan(stages: tuple[Stage, ...], total_s: float) -> list[tuple[str, float | None]]:
    """The timeouts when every stage runs to its limit (the worst case): [(name, seconds)]."""
    b = Budget(total_s)
    out = []
    for i, s in enumerate(stages):
        t = b.timeout(s, last=i == len(stages) - 1)
        out.append((s.name, t))
        b.spend(s, t or 0.0, t)
    return out
