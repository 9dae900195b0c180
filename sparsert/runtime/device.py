"""Device queries: is there a usable CUDA GPU here, and which arch? (No driver, no device and no
CuPy all mean no.)"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CuPy raises driver/runtime errors of several types without a GPU
        return False


def device_arch() -> str | None:
    """'sm_XY' of the current CUDA device, or None when there is no GPU, driver or CuPy."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        cc = str(cupy.cuda.Device().compute_capability)
        return f"sm_{cc}" if cc.isdigit() else None
    except BaseException as exc:  # CUDARuntimeError, ImportError, RuntimeError, ...
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return None
