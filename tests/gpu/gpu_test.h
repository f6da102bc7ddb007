// The GPU op tests' harness: every tests/gpu/test_cuda_*.cpp file registers
// its checks with DECO_GPU_TEST; gpu_main.cpp runs them all in one program
// (deco_gpu_tests, or only those whose name contains argv[1]) and exits 77
// (CTest: skipped) when there is no GPU, as on CI machines.
//
// Each check compares a CUDA op with the CPU reference of kernels/ops.h on
// random inputs and prints one line: the relative error and "ok" or "FAIL".
// Tolerances are stated per dtype where a check is made: float32 kernels
// differ from the CPU only in summation order (1e-5 relative); bfloat16
// results carry the rounding of their inputs or outputs (2^-8 relative per
// rounding).
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace deco::gpu_test {

using TestFn = void (*)();
int register_test(const char* name, TestFn fn);
void count_failure();

// Host float32 normals from a seeded stream (core/rng.h), times `scale`.
Buffer random_host(const Shape& shape, uint64_t seed, double scale = 1.0);
Buffer to_device(const Buffer& host);
Buffer to_host(const Tensor& device);
// float32 <-> bfloat16 on the host (round to nearest even), for bf16 inputs.
Buffer to_bf16(const Buffer& f32);
Buffer bf16_values(const Buffer& bf16);  // the float32 values bf16 storage holds

// ||gpu - cpu|| / ||cpu|| (an all-zero cpu compares the norm of gpu) within
// `tol`; both on the host, float32 or float64 (compared in double).
void expect_close(const std::string& what, const Tensor& cpu, const Tensor& gpu_on_host, double tol = 1e-5);
// |gpu - cpu| <= tol * max(1, |cpu|), for scalars (losses, norms).
void expect_scalar(const std::string& what, double cpu, double gpu, double tol = 1e-5);
// Integer tensors (int32/int64) equal element for element.
void expect_equal(const std::string& what, const Tensor& cpu, const Tensor& gpu_on_host);

}  // namespace deco::gpu_test

#define DECO_GPU_CONCAT_(a, b) a##b
#define DECO_GPU_CONCAT(a, b) DECO_GPU_CONCAT_(a, b)
// DECO_GPU_TEST(rope) { ... }: a check run by deco_gpu_tests.
#define DECO_GPU_TEST(name)                                                                         \
  static void deco_gpu_test_##name();                                                              \
  [[maybe_unused]] static const int DECO_GPU_CONCAT(deco_gpu_registered_, name) =                   \
      ::deco::gpu_test::register_test(#name, &deco_gpu_test_##name);                               \
  static void deco_gpu_test_##name()
