// CUDA: AdamW (kernels/cpu/adamw.cpp's semantics, the same per-element
// arithmetic in the same order and dtype, so a float32 update matches the
// CPU's to the rounding of exp/sqrt implementations).
#include <cmath>

#include "kernels/cuda/check.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/dispatch.h"

namespace deco::cuda {
namespace {

template <typename T>
__global__ void adamw_kernel(T* p, const T* g, T* m, T* v, int64_t n, T b1, T b2, T gs, T lr, T eps, T wd, T inv_bc1,
                             T inv_sqrt_bc2) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const T gi = g[i] * gs;
  const T mi = b1 * m[i] + (T(1) - b1) * gi;
  const T vi = b2 * v[i] + (T(1) - b2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  const T mhat = mi * inv_bc1;
  const T denom = sqrt(vi) * inv_sqrt_bc2 + eps;
  p[i] = p[i] * wd - lr * mhat / denom;
}

}  // namespace

void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, const ops::AdamWStep& hp,
                  bool decay) {
  const int64_t n = param.numel();
  if (n == 0) return;
  // The step's constants in double on the host, as the CPU computes them.
  const double bc1 = 1.0 - std::pow(hp.beta1, static_cast<double>(hp.step));
  const double bc2 = 1.0 - std::pow(hp.beta2, static_cast<double>(hp.step));
  const double wd_factor = decay ? 1.0 - hp.lr * hp.weight_decay : 1.0;
  dispatch_float(param.dtype(), [&](auto tag) {
    using T = decltype(tag);
    adamw_kernel<T><<<static_cast<unsigned>((n + 255) / 256), 256, 0, current_stream()>>>(
        param.data<T>(), grad.data<T>(), m.data<T>(), v.data<T>(), n, static_cast<T>(hp.beta1),
        static_cast<T>(hp.beta2), static_cast<T>(hp.grad_scale), static_cast<T>(hp.lr), static_cast<T>(hp.eps),
        static_cast<T>(wd_factor), static_cast<T>(1.0 / bc1), static_cast<T>(1.0 / std::sqrt(bc2)));
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

}  // namespace deco::cuda
