"""The report `sparsify` attaches to the model it returns (`model.sparsert_report`): one
LayerReport per nn.Linear / nn.Conv2d layer (shape, dtype, sparsity, compiled or skipped and why,
the inputs seen, kernels and compile time) and the SparsifyReport holding them, with lookup by
layer name, a dict form and the printed table."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LayerReport:
    name: str
    kind: str  # "Linear" or "Conv2d"
    shape: tuple[int, ...]  # the weight's shape
    sparsity: float
    compiled: bool
    reason: str = ""  # why it was skipped; "" when compiled
    inputs: tuple[tuple[int, ...], ...] = ()  # input shapes seen by the example forward
    kernels: int = 0  # kernels compiled for those inputs
    compile_seconds: float = 0.0
    dtype: str = ""  # the weight's dtype ("float32", "float16", "bfloat16", ...): the kernels' when compiled

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SparsifyReport:
    backend: str
    min_sparsity: float
    layers: tuple[LayerReport, ...]

    @property
    def compiled(self) -> tuple[LayerReport, ...]:
        return tuple(r for r in self.layers if r.compiled)

    @property
    def skipped(self) -> tuple[LayerReport, ...]:
        return tuple(r for r in self.layers if not r.compiled)

    def __getitem__(self, name: str) -> LayerReport:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(name)

    def as_dict(self) -> dict:
        return {"backend": self.backend, "min_sparsity": self.min_sparsity,
                "layers": [r.as_dict() for r in self.layers]}

    def __str__(self) -> str:
        rows = [("layer", "type", "weight", "dtype", "sparsity", "status")]
        for r in self.layers:
            status = (f"compiled ({r.kernels} kernel{'s' * (r.kernels != 1)}, {r.compile_seconds:.1f} s)"
                      if r.compiled else f"skipped: {r.reason}")
            rows.append((r.name, r.kind, "x".join(map(str, r.shape)), r.dtype, f"{r.sparsity:.3f}", status))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row[:5], widths)) + "  " + row[5] for row in rows]
        lines.append(f"{len(self.compiled)} of {len(self.layers)} layers compiled "
                     f"(backend {self.backend!r}, min_sparsity {self.min_sparsity:g})")
        return "\n".join(lines)
