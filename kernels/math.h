// Per-element math shared by the CPU reference kernels and the CUDA kernels.
// Keeping it in one header means the CPU tests exercise exactly the formulas
// the GPU runs.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define DECO_HD __host__ __device__ __forceinline__
#else
#define DECO_HD inline
#endif

namespace deco::math {

// The constants of the paper's entropy regularizer (deco-model.md section 3),
// one definition for the CPU reference and the CUDA kernels.
constexpr double kEntropySumEps = 1e-5;  // p = r / (sum r + 1e-5)
constexpr double kEntropyLogEps = 1e-5;  // H = -sum p log(p + 1e-5)

// std::exp on the host: a bare exp(float) would resolve to C's double exp.
template <typename T> DECO_HD T exp_t(T x) {
#if defined(__CUDA_ARCH__)
  return exp(x);
#else
  return std::exp(x);
#endif
}

template <typename T> DECO_HD T sigmoid(T x) { return T(1) / (T(1) + exp_t(-x)); }

// SiLU(x) = x * sigmoid(x)
template <typename T> DECO_HD T silu(T x) { return x * sigmoid(x); }

// d SiLU / dx = s + x * s * (1 - s), with s = sigmoid(x)
template <typename T> DECO_HD T silu_grad(T x) {
  T s = sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}

// Rotate-half RoPE on one (a, b) pair of a head vector: the first half holds
// a, the second b, and (a, b) -> (a cos - b sin, b cos + a sin). The
// backward is the rotation by the opposite angle.
template <typename T> DECO_HD void rope_rotate(T& a, T& b, T cos_t, T sin_t) {
  T a2 = a * cos_t - b * sin_t;
  T b2 = b * cos_t + a * sin_t;
  a = a2;
  b = b2;
}

}  // namespace deco::math
