"""NVRTC / nvdisasm / cuobjdump / hipcc wrappers. No GPU needed (CUBINs are built for sm_80/sm_90)."""

from __future__ import annotations

import math
import struct
from concurrent.futures import ThreadPoolExecutor

import pytest

from sparsert.backends.cuda import sass
from sparsert.backends.cuda.sass import disassemble, parse_float_literal, sass_stats, stats_from_disassembly
from sparsert.choices import CUDA_ARCH as ARCH_RE
from sparsert.errors import CompileError, OptionsError, ToolchainError
from sparsert.runtime.device import device_arch
from sparsert.toolchain import nvrtc
from sparsert.toolchain.hipcc import compile_hip, hipcc_version
from sparsert.toolchain.locate import find_tool
from sparsert.toolchain.nvrtc import compile_cuda, nvrtc_version, parse_ptxas_log

ELF = b"\x7fELF"
BUNDLE = b"__CLANG_OFFLOAD_BUNDLE__"

have_nvdisasm = pytest.mark.nvdisasm  # skipped in tests/conftest.py where it is missing
have_hipcc = pytest.mark.hipcc


def bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


# (CUDA expression, expected binary32 bits); each is the b operand of one FFMA in a dependent chain
WEIGHTS = [
    ("0.1f", 0x3DCCCCCD),
    ("-7.0f", 0xC0E00000),
    ("1e-45f", 0x00000001),  # smallest denormal: survives as an immediate
    ("1e-40f", bits(1e-40)),  # denormal
    ("1.17549435e-38f", 0x00800000),  # FLT_MIN
    ("3.4e38f", bits(3.4e38)),
    ("(1.0f/3.0f)", 0x3EAAAAAB),
    ("0.5f", 0x3F000000),
    ("-1.25f", 0xBFA00000),
    ("1e-5f", bits(1e-5)),
    ("123456.789f", bits(123456.789)),
    ("__int_as_float(0x7f800000)", 0x7F800000),  # +INF
    ("__int_as_float(0xff800000)", 0xFF800000),  # -INF
    ("__int_as_float(0xffc00001)", 0xFFC00001),  # NaN with a payload: exact only via -hex
]


def chain_source(weights=WEIGHTS) -> str:
    body = "\n".join(f"  acc = fmaf(x[{i}], {w}, acc);" for i, (w, _) in enumerate(weights))
    return (
        'extern "C" __global__ void chain(const float* __restrict__ x, float* __restrict__ y) {\n'
        "  float acc = y[0];\n" + body + "\n  y[0] = acc;\n}\n"
    )


@pytest.fixture(scope="module", params=["sm_80", "sm_90"])
def chain(request):
    return request.param, compile_cuda(chain_source(), arch=request.param)


def test_nvrtc_version():
    major, minor = nvrtc_version()
    assert major >= 12 and minor >= 0


def test_cubin_is_elf_and_reports_resources(chain):
    arch, r = chain
    assert r.output[:4] == ELF
    assert r.text is None
    assert f"for '{arch}'" in r.log
    assert r.registers is not None and r.registers > 0
    assert r.spill_stores == 0 and r.spill_loads == 0
    assert r.seconds > 0


@have_nvdisasm
def test_nvdisasm_accepts_cubin(chain):
    arch, r = chain
    text = disassemble(r.output)
    assert f".target\t{arch}" in text or f".target {arch}" in text or arch in text
    assert "FFMA" in text
    # full CUBIN: nvdisasm would reject a truncated image (the CuPy getCUBIN bug)
    with pytest.raises(ToolchainError):
        disassemble(r.output[:-64])


@have_nvdisasm
def test_ffma_immediates_bit_exact(chain):
    _, r = chain
    st = sass_stats(r.output)
    want = [b for _, b in WEIGHTS]
    assert list(st.immediate_bits) == want
    assert st.ffma == st.ffma_imm == len(WEIGHTS)
    assert st.fmul_imm == 0 and st.fadd_imm == 0
    assert len(st.immediates) == len(WEIGHTS)
    for got, b in zip(st.immediates, want):
        exp = struct.unpack("<f", struct.pack("<I", b))[0]
        assert (math.isnan(got) and math.isnan(exp)) or got == exp
    assert st.spills is False
    if find_tool("cuobjdump") is not None:
        assert st.registers == r.registers
    assert st.instructions > len(WEIGHTS)


@have_nvdisasm
def test_decimal_text_round_trips_except_nan_payload(chain):
    """Without -hex the printed decimals are still exact; only the NaN payload is lost."""
    _, r = chain
    _, _, n_imm, _, _, got, _ = stats_from_disassembly(disassemble(r.output))
    assert n_imm == len(WEIGHTS)
    assert list(got[:-1]) == [b for _, b in WEIGHTS[:-1]]
    assert got[-1] == 0xFFC00000  # printed as -QNAN


def test_parse_float_literal():
    assert parse_float_literal("0.10000000149011611938") == 0x3DCCCCCD
    assert parse_float_literal("-7") == 0xC0E00000
    assert parse_float_literal("1.4012984643248170709e-45") == 1
    assert parse_float_literal("9.9999997473787516356e-06") == bits(1e-5)
    assert parse_float_literal("1e-05") == bits(1e-5)
    assert parse_float_literal("+INF") == 0x7F800000
    assert parse_float_literal("-INF") == 0xFF800000
    assert parse_float_literal("+QNAN") == 0x7FC00000
    assert parse_float_literal("-QNAN") == 0xFFC00000
    assert parse_float_literal("0x3f800000") == 0x3F800000
    for not_imm in ("R0", "-RZ", "|R3|", "c[0x0][0x160]", "UR4", "desc[UR4][R2.64]", ""):
        assert parse_float_literal(not_imm) is None


def test_stats_from_text_fmul_fadd_predicates():
    text = """
        /*0000*/                   FMUL R7, R0, 0.37000000476837158203 ;
        /*0010*/                   FADD.FTZ R9, R6, 0.25 ;
        /*0020*/              @!P0 FFMA R1, R2, -1.25, R1 ;
        /*0030*/                   FFMA R1, R2, R3, R1 ;
        /*0040*/                   FFMA.FTZ R5, R8, R5, 3 ;
        /*0050*/                   STL [R1], R2 ;
        /*0060*/                   NOP;
    """
    n, ffma, ffma_imm, fmul_imm, fadd_imm, imm, local = stats_from_disassembly(text)
    assert (n, ffma, ffma_imm, fmul_imm, fadd_imm) == (6, 3, 2, 1, 1)
    assert imm == (bits(0.37), 0xBFA00000, 0x40400000)
    assert local is True


def test_parse_ptxas_log_several_functions():
    log = (
        "ptxas info    : Compiling entry function 'a' for 'sm_90'\n"
        "ptxas         .     8 bytes stack frame, 4 bytes spill stores, 8 bytes spill loads\n"
        "ptxas info    : Used 40 registers, used 0 barriers\n"
        "ptxas info    : Compiling entry function 'b' for 'sm_90'\n"
        "ptxas         .     0 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 16 bytes cumulative stack size\n"
    )
    assert parse_ptxas_log(log) == (255, 16, 24)
    assert parse_ptxas_log("") == (None, None, None)


def test_want_ptx_and_caller_options():
    src = 'extern "C" __global__ void k(float* y) { y[threadIdx.x] *= 2.5f; }'
    r = compile_cuda(src, arch="sm_90a", want_ptx=True, options=("-DFOO=1", "--use_fast_math"))
    assert r.output[:4] == ELF
    assert r.text is not None and ".entry k" in r.text and ".target sm_90a" in r.text


def test_syntax_error_raises_compile_error_with_log():
    src = 'extern "C" __global__ void k(float* y) { y[0] = 1.0f +; }'
    with pytest.raises(CompileError) as ei:
        compile_cuda(src, arch="sm_90", name="broken_kernel.cu")
    msg = str(ei.value)
    assert "broken_kernel.cu" in msg
    assert "error" in msg and "expected an expression" in msg


@pytest.mark.parametrize("arch", ["sm90", "compute_90", "gfx90a", "sm_", "SM_90", "", None, 90])
def test_bad_arch_raises_options_error(arch):
    with pytest.raises(OptionsError, match="arch"):
        compile_cuda("__global__ void k() {}", arch=arch)


def test_missing_nvrtc_library_is_a_toolchain_error(monkeypatch):
    import cuda.pathfinder

    def boom(name):
        raise OSError(f"lib{name}.so: cannot open shared object file")

    monkeypatch.setattr(nvrtc, "_lib", None)
    monkeypatch.setattr(nvrtc, "_load_error", None)
    monkeypatch.setattr(cuda.pathfinder, "load_nvidia_dynamic_lib", boom)
    with pytest.raises(ToolchainError, match="pip install nvidia-cuda-nvrtc"):
        compile_cuda("__global__ void k() {}", arch="sm_90")


def test_missing_nvdisasm_is_a_toolchain_error(monkeypatch):
    monkeypatch.setattr(sass, "find_tool", lambda name: None)  # the name sass.py imported from toolchain.locate
    with pytest.raises(ToolchainError, match="pip install nvidia-cuda-nvdisasm"):
        disassemble(ELF + b"\0" * 60)


def test_concurrent_compiles():
    srcs = [
        f'extern "C" __global__ void k{i}(float* y) {{ y[threadIdx.x] = fmaf(y[threadIdx.x], {i}.5f, 1.0f); }}'
        for i in range(6)
    ]
    with ThreadPoolExecutor(max_workers=6) as ex:
        results = list(ex.map(lambda s: compile_cuda(s, arch="sm_80"), srcs))
    for i, r in enumerate(results):
        assert r.output[:4] == ELF and f"'k{i}'" in r.log


def test_device_arch_does_not_raise():
    arch = device_arch()
    assert arch is None or ARCH_RE.match(arch)


@have_hipcc
def test_hipcc_compiles_code_object():
    src = (
        "#include <hip/hip_runtime.h>\n"
        'extern "C" __global__ void k(const float* x, float* y) {\n'
        "  y[threadIdx.x] = fmaf(x[threadIdx.x], 0.5f, 1.25f);\n}\n"
    )
    r = compile_hip(src, arch="gfx90a")
    assert len(r.output) > 0
    assert r.output[:4] == ELF or r.output.startswith(BUNDLE)
    assert r.seconds > 0
    assert hipcc_version()


@have_hipcc
def test_hipcc_error_is_compile_error():
    with pytest.raises(CompileError, match="bad_kernel.hip"):
        compile_hip("#include <hip/hip_runtime.h>\nint f( {\n", name="bad_kernel.hip")


def test_hip_bad_arch():
    with pytest.raises(OptionsError, match="arch"):
        compile_hip("", arch="sm_90")
