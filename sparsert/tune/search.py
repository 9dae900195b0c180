"""The search (pure: no GPU, no compiler): coordinate descent over the space, a budget of trials."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from ..errors import SparsertError
from .space import SCHEDULE_FIELDS, Params


@dataclass(frozen=True)
class Trial:
    params: Params
    status: str  # "ok", or why it was rejected: compile-error, wrong, spills, launch-error, ...
    time_us: float | None = None
    max_rel_err: float | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.time_us is not None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["params"] = dict(zip(SCHEDULE_FIELDS, self.params))
        return d


def _neighbours(p: Params, axes: Sequence[Sequence[int]], two_step: bool) -> list[Params]:
    """One-coordinate moves (to every value, nearest first), or adjacent two-coordinate moves."""
    dims = len(p)
    idx = [axes[a].index(p[a]) for a in range(dims)]
    out: list[Params] = []
    if not two_step:
        # every value of every axis, nearest first across axes, so a small budget sees each axis
        moves = sorted((abs(j - idx[a]), a, j) for a in range(dims) for j in range(len(axes[a]))
                       if j != idx[a])
        for _, a, j in moves:
            q = list(p)
            q[a] = axes[a][j]
            out.append(tuple(q))  # type: ignore[arg-type]
        return out
    for a in range(dims):
        for b in range(a + 1, dims):
            for da in (-1, 1):
                for db in (-1, 1):
                    ja, jb = idx[a] + da, idx[b] + db
                    if 0 <= ja < len(axes[a]) and 0 <= jb < len(axes[b]):
                        q = list(p)
                        q[a], q[b] = axes[a][ja], axes[b][jb]
                        out.append(tuple(q))  # type: ignore[arg-type]
    return out


def search(space: Sequence[Params], evaluate: Callable[[Params], Trial], *, start: Params | None,
           budget: int, on_trial: Callable[[int, Trial, Trial | None], None] | None = None
           ) -> list[Trial]:
    """Coordinate descent over `space` from `start`; at most `budget` evaluations. Deterministic.

    Returns every trial in evaluation order (the caller picks the fastest ok one).
    """
    if not space or budget < 1:
        return []
    feasible = set(space)
    axes = [sorted({p[a] for p in space}) for a in range(len(space[0]))]
    trials: dict[Params, Trial] = {}
    order: list[Trial] = []

    def best() -> Trial | None:
        ok = [t for t in order if t.ok]
        return min(ok, key=lambda t: t.time_us) if ok else None

    def run(p: Params) -> None:
        t = evaluate(p)
        trials[p] = t
        order.append(t)
        if on_trial:
            on_trial(len(order), t, best())

    current = start if start in feasible else space[0]
    run(current)
    while len(order) < budget:
        improved = False
        for two_step in (False, True):
            for q in _neighbours(current, axes, two_step):
                if len(order) >= budget:
                    break
                if q in feasible and q not in trials:
                    run(q)
            b = best()
            if b is not None and b.params != current and (
                    current not in trials or not trials[current].ok
                    or b.time_us < trials[current].time_us):
                current, improved = b.params, True
                break  # descend again from the new best, one coordinate at a time
        if not improved:
            if not trials[current].ok:  # a failing start with no ok neighbour: try the rest
                rest = [p for p in space if p not in trials]
                if not rest:
                    break
                current = rest[0]
                run(current)
                continue
            break
    return order


def verified_trial(p, kernel, verify: Callable[..., float], timer: Callable[..., float], rtol: float, *,
                   failed: str = "launch-error") -> Trial:
    """The end of every candidate's evaluation (GPU and CPU tuners): check it against the float64
    reference first, and only a kernel within `rtol` is timed; a failed or senseless timing is
    status `failed`."""
    try:
        err = verify(kernel)
    except SparsertError as e:
        return Trial(p, "run-error", detail=str(e)[:200])
    if not err <= rtol:  # also catches NaN
        return Trial(p, "wrong", max_rel_err=err, detail=f"max relative error {err:.2e} > {rtol:g}")
    try:
        t = float(timer(kernel))
    except SparsertError as e:
        return Trial(p, failed, max_rel_err=err, detail=str(e)[:200])
    if not (t > 0 and math.isfinite(t)):
        return Trial(p, failed, max_rel_err=err, detail=f"timer returned {t!r}")
    return Trial(p, "ok", time_us=t, max_rel_err=err)
