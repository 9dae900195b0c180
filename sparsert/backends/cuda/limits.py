"""NVIDIA hardware and launch limits sparsert plans within (every arch it targets, sm_70..sm_120).
Defined once: the parameter choice, the register cap, the build's spill retry, the tuner and the
launch checks all read them from here."""

SHARED_MEMORY_BYTES = 48 * 1024  # static shared memory a block may use without opt-in
REGISTER_FILE = 65536  # 32-bit registers per SM, and per block, on every arch since sm_70
MAX_REGISTERS_PER_THREAD = 255
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK = (1024, 1024, 64)  # blockDim limits per dimension
MAX_GRID = (2**31 - 1, 65535, 65535)  # gridDim limits per dimension
WARP = 32
MAX_INDEX = 2**31 - 1  # the generated code indexes B, C and R with 32-bit integers (int, .s32/.u32)


def launch_problem(s) -> str | None:
    """None when a schedule's launch fits CUDA's grid and the generated code's 32-bit element
    offsets, else one line naming n (or batch) and the limit. Checked at plan time, before any
    code is rendered (the same source runs through HIP and the emulator, so they share it)."""
    if s.grid_n > MAX_GRID[1]:
        return (f"n={s.n}: {s.grid_n:,} tiles of {s.tile_n} columns, but a grid has at most {MAX_GRID[1]:,} "
                f"in y; n <= {MAX_GRID[1] * s.tile_n:,} with this schedule (compile for a smaller n and "
                f"call the kernel on column blocks)")
    if s.batch > MAX_GRID[2]:
        return f"batch={s.batch}: a grid has at most {MAX_GRID[2]:,} images in z"
    if len(s.blocks) > MAX_GRID[0]:
        return f"{len(s.blocks):,} blocks of rows: a grid has at most {MAX_GRID[0]:,} in x"
    per_image_b = s.k * s.n if s.conv is None else s.conv.c_in * s.conv.h * s.conv.w
    extents = (("B", (s.batch - 1) * s.batch_stride_b + per_image_b),
               ("C", (s.batch - 1) * s.batch_stride_c + s.m * s.n))
    for name, extent in extents:
        if extent > MAX_INDEX:
            what = f"n={s.n}" + (f", batch={s.batch}" if s.batch > 1 else "")
            return (f"{what}: {name} spans {extent:,} elements, but the generated code indexes with 32-bit "
                    f"integers (at most {MAX_INDEX:,} = 2^31 - 1); use a smaller n" +
                    (" or batch" if s.batch > 1 else ""))
    return None
