// The device side of the CUDA emulator: what a kernel source under
// kernels/cuda/ needs to compile as plain C++ and run on the CPU, every CUDA
// thread a fiber (tests/cuda_emu/README.md). Force-included (-include) into
// each kernels/cuda/*.cu after tests/cuda_emu/hostify.py has rewritten its
// launches and __shared__ declarations; nvcc builds never see it.
//
// What it checks that plain C++ would not: __syncthreads reached by some
// threads of a block and not others, and warp collectives (shuffles, ballots,
// mma, ldmatrix) whose mask names lanes that exited or wait elsewhere, are
// reported as deadlocks; shared memory starts as 0xff bytes (NaN in float)
// in every block, so a read before a write shows; cp.async copies land only
// at the cp.async.wait that covers them; ldmatrix and cp.async check their
// alignment; a launch above 1024 threads, or with more than 48 KiB of dynamic
// shared memory without cudaFuncSetAttribute's opt-in, fails as on a GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __grid_constant__
#undef __align__
#undef __shared__
#undef __constant__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) alignas(n)

namespace deco_emu {

// One CUDA thread of the block being run.
struct Lane {
  uint3 thread_idx;
  int linear = 0;  // x + y Dx + z Dx Dy: its warp is linear / 32
};

Lane& self();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

// Suspends the calling thread until every live thread of its block has
// arrived (__syncthreads).
void block_barrier();

// A warp collective: the calling lane waits until every lane in `mask` has
// arrived at a collective of the same `kind` with the same mask, then one
// call op(args of lanes 0..31, present) runs for them all (args[l] is lane
// l's `args`, nullptr for lanes outside the mask) and every lane goes on.
using WarpOp = void (*)(void* const* lane_args, unsigned present);
void warp_collective(unsigned mask, const char* kind, void* args, WarpOp op);

// The block's dynamic shared memory (extern __shared__), 0xff-filled.
unsigned char* dynamic_shared();
// Fills a static __shared__ variable with 0xff the first time a thread of
// the current block declares it.
void shared_declared(void* p, size_t bytes);
template <typename T> void shared_var(T& v) { shared_declared(static_cast<void*>(&v), sizeof(T)); }

// cp.async: queued per thread, performed at the cp.async.wait that covers it.
void cp_async(void* dst, const void* src, int bytes, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending);

void fail_kernel(const char* what);  // reports, and the launch returns an error
// What the last failed launch reported ("" after one that ran): for the
// emulator's own tests (selftest.cu).
const char* last_launch_failure();

struct LaunchConfig {
  dim3 grid, block;
  size_t shared = 0;
  cudaStream_t stream = nullptr;
};

// Runs body() once per thread of every block of the grid, after the checks a
// GPU makes at launch (kernel: the entry's address, for the shared-memory opt-in).
void run_grid(const LaunchConfig& config, const void* kernel, const char* name, void (*body)(void*), void* context);

template <typename... P> struct BoundLaunch {
  LaunchConfig config;
  void (*kernel)(P...);
  const char* name;
  template <typename... A> void operator()(A&&... args) const {
    // Arguments converted to the parameter types once, as a launch does;
    // each thread gets its own copy, as each gets its own registers.
    struct Context {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> args;
    } context{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    run_grid(
        config, reinterpret_cast<const void*>(kernel), name,
        [](void* c) {
          auto* ctx = static_cast<Context*>(c);
          std::tuple<std::decay_t<P>...> copy = ctx->args;
          std::apply(ctx->kernel, copy);
        },
        &context);
  }
};

struct Launcher {
  LaunchConfig config;
  template <typename... P> BoundLaunch<P...> operator()(void (*kernel)(P...), const char* name) const {
    return {config, kernel, name};
  }
};

inline Launcher launch(dim3 grid, dim3 block, size_t shared = 0, cudaStream_t stream = nullptr) {
  return Launcher{LaunchConfig{grid, block, shared, stream}};
}

}  // namespace deco_emu

#define threadIdx (::deco_emu::self().thread_idx)
#define blockIdx (::deco_emu::block_idx())
#define blockDim (::deco_emu::block_dim())
#define gridDim (::deco_emu::grid_dim())
constexpr int warpSize = 32;

inline void __syncthreads() { ::deco_emu::block_barrier(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::deco_emu::warp_collective(mask, "__syncwarp", nullptr, [](void* const*, unsigned) {});
}

template <typename T> T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  struct Args {
    T in, out;
    int lane_mask, width;
  } args{value, value, lane_mask, width};
  ::deco_emu::warp_collective(mask, "__shfl_xor_sync", &args, [](void* const* lanes, unsigned present) {
    for (int l = 0; l < 32; ++l) {
      if (!(present >> l & 1u)) continue;
      auto* me = static_cast<Args*>(lanes[l]);
      // Within its width-sized segment; a source outside the mask leaves the
      // lane's own value (undefined on a GPU: the kernels never do it).
      const int src = (l & ~(me->width - 1)) | ((l ^ me->lane_mask) & (me->width - 1));
      if (present >> src & 1u) me->out = static_cast<Args*>(lanes[src])->in;
      else ::deco_emu::fail_kernel("__shfl_xor_sync reads a lane outside its mask");
    }
  });
  return args.out;
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  struct Args {
    int pred;
    unsigned out;
  } args{predicate != 0, 0};
  ::deco_emu::warp_collective(mask, "__ballot_sync", &args, [](void* const* lanes, unsigned present) {
    unsigned bits = 0;
    for (int l = 0; l < 32; ++l)
      if ((present >> l & 1u) && static_cast<Args*>(lanes[l])->pred) bits |= 1u << l;
    for (int l = 0; l < 32; ++l)
      if (present >> l & 1u) static_cast<Args*>(lanes[l])->out = bits;
  });
  return args.out;
}

// Atomics: one thread runs at a time, so a plain read-modify-write is atomic.
template <typename T, typename V> T atomicAdd(T* address, V value) {
  const T old = *address;
  *address = static_cast<T>(old + value);
  return old;
}
template <typename T, typename V> T atomicMax(T* address, V value) {
  const T old = *address;
  if (static_cast<T>(value) > old) *address = static_cast<T>(value);
  return old;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }

// CUDA's min and max: overloads for the arithmetic types, mixed ones promoted.
template <typename A, typename B, typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <typename A, typename B, typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}
