"""Where the NVIDIA command-line tools are: the pip wheels first (nvidia/cu*/bin), then PATH."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def find_tool(name: str) -> str | None:
    """Path of ``nvdisasm``/``cuobjdump``: the pip wheel's copy (nvidia/cu*/bin) first, then PATH."""
    try:
        import nvidia  # namespace package of the nvidia-* wheels

        roots = [Path(p) for p in nvidia.__path__]
    except Exception:
        roots = []
    for root in roots:
        for cand in sorted(root.glob(f"*/bin/{name}"), reverse=True):  # cu13 before cu12
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
    return shutil.which(name)


def find_cuda_include() -> str | None:
    """The CUDA include folder holding cuda_fp16.h / cuda_bf16.h (NVRTC needs it for half
    kernels): the pip wheels' (nvidia/cu*/include) first, then $CUDA_HOME/include."""
    try:
        import nvidia

        roots = [Path(p) for p in nvidia.__path__]
    except Exception:
        roots = []
    for root in roots:
        for cand in sorted(root.glob("*/include/cuda_fp16.h"), reverse=True):
            return str(cand.parent)
    for env in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(env)
        if home and (Path(home) / "include" / "cuda_fp16.h").is_file():
            return str(Path(home) / "include")
    return None
