// Helpers the op implementations use to pick a backend and a dtype.
#pragma once

#include "core/error.h"
#include "core/tensor.h"

namespace deco::detail {
[[noreturn]] void bad_dtype(DType dtype, const char* op);
[[noreturn]] void no_cuda_kernel(const char* op);
}  // namespace deco::detail

namespace deco {
// Calls f(T{}) with T = float or double according to `dtype`; the CPU
// reference supports both (float64 is what the finite-difference tests
// use). A function, not a macro, because OpenMP pragmas cannot appear
// inside macro arguments. Use: dispatch_float(x.dtype(), [&](auto tag) {
// using T = decltype(tag); ... });
template <typename F> void dispatch_float(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32: f(float{}); break;
    case DType::F64: f(double{}); break;
    default: detail::bad_dtype(dtype, "a floating-point op");
  }
}
}  // namespace deco

// An op whose only implementation so far is the CPU reference refuses
// device tensors with a message rather than reading device memory on the host.
#define DECO_REQUIRE_CPU(t) \
  if ((t).device() != ::deco::Device::CPU) ::deco::detail::no_cuda_kernel(__func__)

#ifdef DECO_WITH_CUDA
#define DECO_CUDA_DISPATCH(t, ...)                     \
  if ((t).device() == ::deco::Device::CUDA) {          \
    __VA_ARGS__;                                       \
    return;                                            \
  }
#else
#define DECO_CUDA_DISPATCH(t, ...) DECO_REQUIRE_CPU(t)
#endif
