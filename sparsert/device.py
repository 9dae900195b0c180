"""Is there a usable CUDA GPU here? (No driver, no device and no CuPy all mean no.)"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CuPy raises driver/runtime errors of several types without a GPU
        return False
