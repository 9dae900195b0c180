"""The C++ kernel source (CUDA, and HIP as a dialect of it) rendered from the Schedule through the
Jinja template templates/cuda/spmm.cu.j2: what NVRTC, hipcc and the emulator compile."""
