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

template <typename T> DECO_HD T sqrt_t(T x) {
#if defined(__CUDA_ARCH__)
  return sqrt(x);
#else
  return std::sqrt(x);
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

// AdamW's per-step constants in the parameters' dtype, computed on the host
// in double (ops::adamw_constants).
template <typename T> struct AdamWConstants {
  T beta1, beta2;
  T grad_scale;        // the clipping factor, applied to the gradient first
  T lr, eps;
  T decay_factor;      // 1 - lr * weight_decay, for the tensors that decay
  T inv_bc1;           // 1 / (1 - beta1^t)
  T inv_sqrt_bc2;      // 1 / sqrt(1 - beta2^t)
};

// One element of AdamW in PyTorch's form: the moments of the scaled
// gradient, then p = p * decay - lr * mhat / (sqrt(vhat) + eps), with the
// bias corrections folded into mhat and the denominator. decay is
// c.decay_factor for the tensors that decay and 1 for the others (an exact
// multiply, and one expression either way, so the compiler may fuse it with
// the subtraction the same way for both). The same operations in the same
// order on the CPU and the GPU, so a float32 update differs between them
// only by fused multiply-adds.
template <typename T>
DECO_HD void adamw_element(T& p, T& m, T& v, T g, const AdamWConstants<T>& c, T decay) {
  const T gi = g * c.grad_scale;
  m = c.beta1 * m + (T(1) - c.beta1) * gi;
  v = c.beta2 * v + (T(1) - c.beta2) * gi * gi;
  const T mhat = m * c.inv_bc1;
  const T denom = sqrt_t(v) * c.inv_sqrt_bc2 + c.eps;
  p = p * decay - c.lr * mhat / denom;
}

}  // namespace deco::math
