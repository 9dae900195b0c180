// sparsert host shim: compile NVRTC-style CUDA source with g++ -std=c++20 and run it on the CPU.
//
// Used by sparsert/host.py as `g++ -std=c++20 -include host_shim.h ...`, so the generated .cu text
// compiles unchanged (NVRTC sources include no headers; every built-in they use is declared here).
//
// Execution model (see sparsert_host::run_grid at the end): one launch creates one std::thread per
// thread of a block, once. Each thread fixes its thread_local threadIdx and then walks every block
// of the grid in order (blockIdx.z, .y, .x; x fastest), so at any moment all threads of the launch
// execute the same block. That is what makes `__shared__` -> `static` sound (one block alive at a
// time, and a block-end barrier keeps the next block from touching shared memory while stragglers
// of the previous one still read it) and `__syncthreads()` -> a std::barrier over the block's
// threads sound.
//
// Not supported (compile error, not silent misbehaviour): warp intrinsics (__shfl*_sync, __ballot_sync,
// __syncwarp, cooperative groups), `extern __shared__` (dynamic shared memory), inline PTX (asm),
// textures/surfaces.  Floating point differs from the GPU by rounding only: NVRTC contracts
// `a += w * b` into FMA by default, g++ (ISO mode, no -mfma) does not. The half types (__half,
// __nv_bfloat16 and their pairs, the cuda_fp16.h / cuda_bf16.h subset sparsert emits) are exact:
// conversions round to nearest even, and __hfma2 / __hadd2 round the exact result once, as
// HFMA2 does (see sparsert_half below).
#pragma once

#include <atomic>
#include <barrier>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <latch>
#include <math.h>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#define SPARSERT_HOST_SHIM 1

// Everything the shim defines is hidden: inline variables with default visibility would become
// STB_GNU_UNIQUE symbols, shared process-wide between all kernel libraries Python loads (one
// library's launch would then see another's blockDim/barrier). Hidden keeps each .so self-contained.
#pragma GCC visibility push(hidden)

// ---- vector and index types (same layout and alignment as CUDA's vector_types.h) ---------------
// The alignment matters: `*reinterpret_cast<const float4*>(p)` must be 16-byte aligned on the GPU,
// and g++ may emit aligned SSE loads for it too, so a misaligned generated access is caught here.
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct alignas(8) float2 { float x, y; };
struct float3 { float x, y, z; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct int3 { int x, y, z; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) double2 { double x, y; };
inline constexpr float2 make_float2(float x, float y) { return {x, y}; }
inline constexpr float3 make_float3(float x, float y, float z) { return {x, y, z}; }
inline constexpr float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline constexpr int2 make_int2(int x, int y) { return {x, y}; }
inline constexpr int3 make_int3(int x, int y, int z) { return {x, y, z}; }
inline constexpr int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline constexpr uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline constexpr uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return {x, y, z}; }
inline constexpr uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline constexpr double2 make_double2(double x, double y) { return {x, y}; }

// ---- built-in variables ------------------------------------------------------------------------
// threadIdx/blockIdx differ per CUDA thread, and each CUDA thread of a block is one OS thread, so
// thread_local is exact. blockDim/gridDim are the same for the whole launch: plain globals, written
// by run_grid before any thread starts (std::thread construction orders the write before reads).
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline dim3 blockDim;
inline dim3 gridDim;
inline constexpr int warpSize = 32;

// ---- qualifiers --------------------------------------------------------------------------------
// Function-space qualifiers carry no meaning on the host. `__shared__` -> `static`: one copy per
// kernel/function, which is one copy per block because blocks run one after another (see above).
// `__restrict__` is already a g++ keyword. Defined after the standard headers on purpose (libstdc++
// spells attributes like __noinline__ itself).
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __shared__ static
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__

// ---- memory access -----------------------------------------------------------------------------
// __ldg is a load through the read-only cache: on the host, a plain load.
template <class T>
inline T __ldg(const T* p) { return *p; }

// ---- integer and float helpers -----------------------------------------------------------------
// CUDA overloads min/max for every arithmetic pair (device math headers); the common ones here.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(int a, unsigned b) { return min(static_cast<unsigned>(a), b); }
inline unsigned max(int a, unsigned b) { return max(static_cast<unsigned>(a), b); }
inline unsigned min(unsigned a, int b) { return min(a, static_cast<unsigned>(b)); }
inline unsigned max(unsigned a, int b) { return max(a, static_cast<unsigned>(b)); }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// Bit reinterpretation: std::bit_cast is exactly CUDA's __int_as_float & co (no conversion).
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline int __float_as_int(float v) { return std::bit_cast<int>(v); }
inline float __uint_as_float(unsigned v) { return std::bit_cast<float>(v); }
inline unsigned __float_as_uint(float v) { return std::bit_cast<unsigned>(v); }
inline double __longlong_as_double(long long v) { return std::bit_cast<double>(v); }
inline long long __double_as_longlong(double v) { return std::bit_cast<long long>(v); }

// Fast-math intrinsics: correctly rounded host versions (at least as accurate as the GPU's).
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return fminf(fmaxf(x, 0.0f), 1.0f); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }

// ---- half precision: __half, __nv_bfloat16 and their pairs, bit-exact ----------------------------
// Values are stored as their 16 bits; arithmetic is done exactly in double and rounded once:
// a product of two halves is exact in double, TwoSum gives the sum's rounding error, and the sum is
// rounded to odd (53 bits >= 11 + 2) so that the final rounding to the half format is the correct
// round-to-nearest-even of the exact a * b + c (no double rounding). Subnormals are kept (no flush).
namespace sparsert_half {
// x rounded to nearest even in a format of `p` significand bits, smallest normal exponent `emin`
// and largest finite `max`: subnormals kept, overflow to inf. Exact for every double.
inline double round_to(double x, int p, int emin, double max) {
  if (x != x || x == 0 || std::isinf(x)) return x;
  int e;
  std::frexp(x, &e);  // |x| in [2^(e-1), 2^e)
  const int q = (e - 1 > emin ? e - 1 : emin) - (p - 1);  // exponent of the last kept bit
  const double r = std::ldexp(std::nearbyint(std::ldexp(x, -q)), q);
  return std::fabs(r) > max ? std::copysign(INFINITY, x) : r;
}
// p + c rounded to odd at double precision (sticky last bit): exact input for one more rounding.
inline double add_odd(double p, double c) {
  double s = p + c;
  if (std::isinf(s)) return s;
  const double bb = s - p;
  const double err = (p - (s - bb)) + (c - bb);  // TwoSum: p + c == s + err exactly
  if (err == 0) return s;
  if ((s > 0) != (err > 0)) s = std::nextafter(s, 0.0);  // s was rounded away from zero: truncate
  return std::bit_cast<double>(std::bit_cast<std::uint64_t>(s) | 1u);
}
inline constexpr double F16_MAX = 65504.0;
inline constexpr double BF16_MAX = 3.38953138925153547590470800371487866880e+38;  // 0x7F7F
inline double f16_value(unsigned short h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  const double mag = e == 31 ? (m ? NAN : INFINITY) : e ? std::ldexp(1024 + m, e - 25) : std::ldexp(m, -24);
  return (h & 0x8000) ? -mag : mag;
}
inline unsigned short f16_bits(double x) {  // x: any double; rounded to nearest even
  const unsigned short sign = std::signbit(x) ? 0x8000 : 0;
  if (x != x) return sign | 0x7E00;
  const double r = std::fabs(round_to(x, 11, -14, F16_MAX));
  if (std::isinf(r)) return sign | 0x7C00;
  if (r == 0) return sign;
  int e;
  std::frexp(r, &e);
  if (e - 1 < -14) return sign | static_cast<unsigned short>(std::ldexp(r, 24));  // subnormal
  return sign | static_cast<unsigned short>(((e - 1 + 15) << 10) | (static_cast<int>(std::ldexp(r, 11 - e)) - 1024));
}
inline double bf16_value(unsigned short h) { return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16); }
inline unsigned short bf16_bits(double x) {
  if (x != x) return static_cast<unsigned short>((std::bit_cast<std::uint32_t>(static_cast<float>(x)) >> 16) | 0x40);
  const float r = static_cast<float>(round_to(x, 8, -126, BF16_MAX));  // exact: a bf16 is a float
  return static_cast<unsigned short>(std::bit_cast<std::uint32_t>(r) >> 16);
}
}  // namespace sparsert_half

struct __half { unsigned short x; };
struct alignas(4) __half2 { __half x, y; };
struct __nv_bfloat16 { unsigned short x; };
struct alignas(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
inline float __half2float(__half h) { return static_cast<float>(sparsert_half::f16_value(h.x)); }
inline __half __float2half_rn(float f) { return {sparsert_half::f16_bits(f)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(sparsert_half::bf16_value(h.x)); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {sparsert_half::bf16_bits(f)}; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }
inline __half2 __halves2half2(__half a, __half b) { return {a, b}; }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return {a, b}; }
inline __half2 __float2half2_rn(float f) { const __half h = __float2half_rn(f); return {h, h}; }
inline __nv_bfloat162 __float2bfloat162_rn(float f) { const __nv_bfloat16 h = __float2bfloat16_rn(f); return {h, h}; }
inline __half sparsert_hfma(__half a, __half b, __half c) {  // fma.rn.f16: a * b + c rounded once
  using namespace sparsert_half;
  return {f16_bits(add_odd(f16_value(a.x) * f16_value(b.x), f16_value(c.x)))};
}
inline __nv_bfloat16 sparsert_hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  using namespace sparsert_half;
  return {bf16_bits(add_odd(bf16_value(a.x) * bf16_value(b.x), bf16_value(c.x)))};
}
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) { return {sparsert_hfma(a.x, b.x, c.x), sparsert_hfma(a.y, b.y, c.y)}; }
inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
  return {sparsert_hfma(a.x, b.x, c.x), sparsert_hfma(a.y, b.y, c.y)};
}
inline __half2 __hadd2(__half2 a, __half2 b) {  // a + b rounded once (= a * 1 + b)
  const __half one{0x3C00};
  return {sparsert_hfma(a.x, one, b.x), sparsert_hfma(a.y, one, b.y)};
}
inline __nv_bfloat162 __hadd2(__nv_bfloat162 a, __nv_bfloat162 b) {
  const __nv_bfloat16 one{0x3F80};
  return {sparsert_hfma(a.x, one, b.x), sparsert_hfma(a.y, one, b.y)};
}

// ---- atomics -----------------------------------------------------------------------------------
// Each CUDA thread is an OS thread, so a real atomic read-modify-write is needed; std::atomic_ref
// makes a plain float/int object atomic for the duration of the access (alignment of float/int is
// the required alignment). Relaxed order, as CUDA atomics are relaxed; ordering between threads
// comes from __syncthreads()/the block-end barrier/thread join, as on the GPU. Returns the old value.
template <class T>
inline T sparsert_atomic_add(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed); }
inline float atomicAdd(float* p, float v) { return sparsert_atomic_add(p, v); }
inline double atomicAdd(double* p, double v) { return sparsert_atomic_add(p, v); }
inline int atomicAdd(int* p, int v) { return sparsert_atomic_add(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return sparsert_atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return sparsert_atomic_add(p, v); }
inline int atomicSub(int* p, int v) { return std::atomic_ref<int>(*p).fetch_sub(v, std::memory_order_relaxed); }
inline unsigned atomicSub(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_sub(v, std::memory_order_relaxed); }
template <class T>
inline T sparsert_atomic_exch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v, std::memory_order_relaxed); }
inline int atomicExch(int* p, int v) { return sparsert_atomic_exch(p, v); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return sparsert_atomic_exch(p, v); }
inline unsigned long long atomicExch(unsigned long long* p, unsigned long long v) { return sparsert_atomic_exch(p, v); }
inline float atomicExch(float* p, float v) { return sparsert_atomic_exch(p, v); }
template <class T>
inline T sparsert_atomic_cas(T* p, T expected, T desired) {
  std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired, std::memory_order_relaxed);
  return expected;  // the old value on success and on failure
}
inline int atomicCAS(int* p, int c, int v) { return sparsert_atomic_cas(p, c, v); }
inline unsigned atomicCAS(unsigned* p, unsigned c, unsigned v) { return sparsert_atomic_cas(p, c, v); }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long c, unsigned long long v) {
  return sparsert_atomic_cas(p, c, v);
}
template <class T, class Op>
inline T sparsert_atomic_update(T* p, Op op) {
  std::atomic_ref<T> ref(*p);
  T old = ref.load(std::memory_order_relaxed);
  while (!ref.compare_exchange_weak(old, op(old), std::memory_order_relaxed)) {}
  return old;
}
inline int atomicMax(int* p, int v) { return sparsert_atomic_update(p, [v](int o) { return o > v ? o : v; }); }
inline int atomicMin(int* p, int v) { return sparsert_atomic_update(p, [v](int o) { return o < v ? o : v; }); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return sparsert_atomic_update(p, [v](unsigned o) { return o > v ? o : v; }); }
inline unsigned atomicMin(unsigned* p, unsigned v) { return sparsert_atomic_update(p, [v](unsigned o) { return o < v ? o : v; }); }

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---- __syncthreads and the launch loop ----------------------------------------------------------
namespace sparsert_host {

// The barrier of the block being executed (null when the launcher runs without block sync).
inline std::barrier<>* block_barrier = nullptr;
// One launch at a time per library: blockDim/gridDim, the barrier and `static` shared memory are
// per library, and ctypes releases the GIL, so two Python threads could otherwise overlap.
inline std::mutex launch_mutex;

// Called by every thread of the launch, once per block, after the kernel body returned.
// arrive_and_drop (not arrive_and_wait) on the __syncthreads barrier: a thread that has finished the
// block, whether at the end or by an early `return`, stops counting for the block's remaining
// __syncthreads(), like an exited thread on the GPU. So `if (i >= n) return; ... __syncthreads();`
// neither deadlocks nor shifts barrier phases.
struct NextBlock {
  std::optional<std::barrier<>>* sync;
  std::ptrdiff_t threads;
  // Runs once, when every thread has finished the block and before any is released into the next:
  // nobody is inside `sync`, so it can be rebuilt with the full count for the next block.
  void operator()() noexcept { sync->emplace(threads); }
};

// Runs `body` (the kernel call) for every (block, thread) of the launch. Returns 0, or 1 when the
// OS refused to create enough threads (nothing of the kernel ran then).
template <bool Sync, class Body>
int run_grid(dim3 grid, dim3 block, Body& body) noexcept {
  std::lock_guard<std::mutex> lock(launch_mutex);
  const std::ptrdiff_t n = std::ptrdiff_t(block.x) * block.y * block.z;
  gridDim = grid;
  blockDim = block;
  std::optional<std::barrier<>> sync;
  sync.emplace(n);
  std::barrier<NextBlock> block_end(n, NextBlock{&sync, n});
  block_barrier = Sync ? &*sync : nullptr;
  std::latch start(1);
  std::atomic<bool> abandon{false};

  auto worker = [&](unsigned t) {
    start.wait();  // all threads exist before any runs, so a failed spawn can still back out
    if (abandon.load()) return;
    threadIdx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          blockIdx = uint3{x, y, z};
          body();
          if constexpr (Sync) {
            sync->arrive_and_drop();
            block_end.arrive_and_wait();  // no thread enters block b+1 before all left block b
          }
        }
  };

  int rc = 0;
  std::vector<std::thread> threads;
  try {
    threads.reserve(static_cast<std::size_t>(n));
    for (std::ptrdiff_t t = 0; t < n; ++t) threads.emplace_back(worker, static_cast<unsigned>(t));
  } catch (...) {
    abandon.store(true);
    rc = 1;
  }
  start.count_down();
  for (auto& th : threads) th.join();
  block_barrier = nullptr;
  return rc;
}

}  // namespace sparsert_host

// Without block sync (the launcher found no __syncthreads/__shared__ in the source) there is no
// barrier: report the mismatch loudly instead of crashing on a null pointer.
inline void __syncthreads() {
  if (sparsert_host::block_barrier == nullptr) {
    std::fprintf(stderr, "sparsert host shim: __syncthreads() in a launch built without block sync\n");
    std::abort();
  }
  sparsert_host::block_barrier->arrive_and_wait();
}

#pragma GCC visibility pop
