// The CUDA side of the dtype rule of core/tensor.h (accumulate_dtype):
// activations are stored as T (float, double or bfloat16); arithmetic,
// reductions, statistics and parameter gradients use acc_t<T> (float for
// bfloat16, T itself otherwise). A kernel loads with ld(), computes in
// acc_t<T>, and stores with st<T>(), which rounds to nearest even for
// bfloat16 and is the identity for float and double, so the float32 and
// float64 kernels are what they were before bfloat16 came.
#pragma once

#include <cuda_bf16.h>

#include <type_traits>

#include "core/error.h"
#include "core/tensor.h"

namespace deco::cuda {

using bf16 = __nv_bfloat16;

template <typename T> struct Accumulate {
  using type = T;
};
template <> struct Accumulate<bf16> {
  using type = float;
};
template <typename T> using acc_t = typename Accumulate<T>::type;

template <typename T> __device__ __forceinline__ acc_t<T> ld(T v) { return v; }
template <> __device__ __forceinline__ float ld<bf16>(bf16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T st(acc_t<T> v) { return v; }
template <> __device__ __forceinline__ bf16 st<bf16>(float v) { return __float2bfloat16_rn(v); }

// Calls f(T{}) with T the storage type of an activation dtype: float, double or bf16.
template <typename F> void dispatch_activation(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32: f(float{}); break;
    case DType::F64: f(double{}); break;
    case DType::BF16: f(bf16{}); break;
    default: internal_error(__FILE__, __LINE__, str("no CUDA kernel for ", dtype_name(dtype), " activations"));
  }
}

// For ops whose second operand is either in the activations' dtype or in
// its accumulate dtype (a float32 scale, a float32 gradient under bf16):
// calls f(T{}, S{}) with S = T or acc_t<T>, after checking it is one of them.
template <typename F> void dispatch_with_acc(DType activation, DType other, const char* op, F&& f) {
  DECO_ASSERT(other == activation || other == accumulate_dtype(activation), op, ": ", dtype_name(other),
              " alongside ", dtype_name(activation), " activations (expected either, or ",
              dtype_name(accumulate_dtype(activation)), ")");
  dispatch_activation(activation, [&](auto tag) {
    using T = decltype(tag);
    if (other == activation)
      f(T{}, T{});
    else if constexpr (!std::is_same_v<T, acc_t<T>>)
      f(T{}, acc_t<T>{});
  });
}

// A tensor that must hold the accumulate dtype of T.
template <typename T> acc_t<T>* acc_data(const Tensor& t, const char* op, const char* what) {
  using A = acc_t<T>;
  DECO_ASSERT(t.dtype() == dtype_of<A>::value, op, ": ", what, " is ", dtype_name(t.dtype()), ", expected ",
              dtype_name(dtype_of<A>::value));
  return static_cast<A*>(t.raw());
}

template <typename T> constexpr DType storage_dtype() {
  if constexpr (std::is_same_v<T, bf16>) return DType::BF16;
  else return dtype_of<T>::value;
}

// Typed pointers for any storage dtype (Tensor::data<T> knows float and double only).
template <typename T> T* ptr(const Tensor& t) {
  DECO_ASSERT(t.dtype() == storage_dtype<T>(), "tensor holds ", dtype_name(t.dtype()), ", asked for ",
              dtype_name(storage_dtype<T>()));
  return static_cast<T*>(t.raw());
}

}  // namespace deco::cuda
