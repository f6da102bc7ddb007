// CPU reference: AdamW.
#include <cmath>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/dispatch.h"
#include "kernels/ops.h"

namespace deco::ops {

void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                  const AdamWStep& hp, bool decay) {
  DECO_ASSERT(param.numel() == grad.numel() && m.numel() == param.numel() &&
                  v.numel() == param.numel(), "adamw_update shapes");
  DECO_CUDA_DISPATCH(param, cuda::adamw_update(param, grad, m, v, hp, decay));
  const int64_t n = param.numel();
  const double bc1 = 1.0 - std::pow(hp.beta1, static_cast<double>(hp.step));
  const double bc2 = 1.0 - std::pow(hp.beta2, static_cast<double>(hp.step));
  const double wd_factor = decay ? 1.0 - hp.lr * hp.weight_decay : 1.0;
  dispatch_float(param.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    T* p = param.data<T>();
    const T* g = grad.data<T>();
    T* pm = m.data<T>();
    T* pv = v.data<T>();
    const T b1 = static_cast<T>(hp.beta1), b2 = static_cast<T>(hp.beta2);
    const T gs = static_cast<T>(hp.grad_scale), lr = static_cast<T>(hp.lr);
    const T eps = static_cast<T>(hp.eps), wd = static_cast<T>(wd_factor);
    const T inv_bc1 = static_cast<T>(1.0 / bc1), inv_sqrt_bc2 = static_cast<T>(1.0 / std::sqrt(bc2));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T gi = g[i] * gs;
      pm[i] = b1 * pm[i] + (T(1) - b1) * gi;
      pv[i] = b2 * pv[i] + (T(1) - b2) * gi * gi;
      // PyTorch's form: p - lr * mhat / (sqrt(vhat) + eps)
      const T mhat = pm[i] * inv_bc1;
      const T denom = std::sqrt(pv[i]) * inv_sqrt_bc2 + eps;
      p[i] = p[i] * wd - lr * mhat / denom;
    }
  });
}

}  // namespace deco::ops
