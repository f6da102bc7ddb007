// CPU reference: ReLU routing, the sparsity regularizers, and the routing
// structure (pairs grouped by expert) the sparse expert path consumes.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/parallel.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/dispatch.h"
#include "kernels/math.h"
#include "kernels/ops.h"

namespace deco::ops {
namespace {
using math::kEntropyLogEps;
using math::kEntropySumEps;
}  // namespace

void relu_route_forward(const Tensor& g, const Tensor& counts, const Tensor& z, const Tensor& scale) {
  DECO_CUDA_DISPATCH(z, cuda::relu_route_forward(g, counts, z, scale));
  const Matrix m = z.matrix();  // [N, E]
  DECO_ASSERT(scale.numel() == m.cols && g.numel() == z.numel(), "relu_route_forward shapes");
  dispatch_float(z.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* pz = z.data<T>();
    const T* ps = scale.data<T>();
    T* pg = g.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m.rows * m.cols; ++i) pg[i] = pz[i] > T(0) ? pz[i] * ps[i % m.cols] : T(0);
  });
  if (counts.defined()) {
    DECO_ASSERT(counts.numel() == m.cols, "one count per expert");
    int64_t* pc = counts.data<int64_t>();
    dispatch_float(z.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
      const T* pz = z.data<T>();
      for (int64_t t = 0; t < m.rows; ++t)
        for (int64_t e = 0; e < m.cols; ++e) pc[e] += pz[t * m.cols + e] > T(0);
    });
  }
}

int64_t count_idle_rows(const Tensor& z) {
  if (z.device() == Device::CUDA) {
#ifdef DECO_WITH_CUDA
    return cuda::count_idle_rows(z);
#else
    detail::no_cuda_kernel(__func__);
#endif
  }
  const Matrix m = z.matrix();  // [N, E]
  int64_t idle = 0;
  dispatch_float(z.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* pz = z.data<T>();
    for (int64_t t = 0; t < m.rows; ++t)
      idle += std::none_of(pz + t * m.cols, pz + (t + 1) * m.cols, [](T v) { return v > T(0); });
  });
  return idle;
}

void relu_route_backward(const Tensor& dz, const Tensor& dscale, const Tensor& dg,
                         const Tensor& dr_extra, const Tensor& z, const Tensor& scale) {
  DECO_CUDA_DISPATCH(z, cuda::relu_route_backward(dz, dscale, dg, dr_extra, z, scale));
  const Matrix m = z.matrix();
  const int64_t E = m.cols;
  dispatch_float(z.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* pz = z.data<T>();
    const T* ps = scale.data<T>();
    const T* pdg = dg.data<T>();
    const T* pex = dr_extra.defined() ? dr_extra.data<T>() : nullptr;
    T* pdz = dz.data<T>();
    // g = r * s, r = relu(z): dr = dg*s (+ regularizer), dz = dr where z > 0; ds = sum dg * r
    cpu::for_rows_reduce(m.rows, E, dscale.data<T>(), [&](int64_t t, T* ds) {
      for (int64_t e = 0; e < E; ++e) {
        const int64_t i = t * E + e;
        const T dr = pdg[i] * ps[e] + (pex ? pex[i] : T(0));
        const bool active = pz[i] > T(0);
        pdz[i] = active ? dr : T(0);
        if (active) ds[e] += pdg[i] * pz[i];
      }
    });
  });
}

double entropy_reg_forward(const Tensor& z) {
  if (z.device() == Device::CUDA) {
#ifdef DECO_WITH_CUDA
    return cuda::entropy_reg_forward(z);
#else
    detail::no_cuda_kernel(__func__);
#endif
  }
  const Matrix m = z.matrix();
  double total = 0.0;
  dispatch_float(z.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* pz = z.data<T>();
    for (int64_t t = 0; t < m.rows; ++t) {
      const T* row = pz + t * m.cols;
      double sum = 0.0;
      for (int64_t e = 0; e < m.cols; ++e) sum += std::max(row[e], T(0));
      const T denom = static_cast<T>(sum + kEntropySumEps);
      T h = 0;
      for (int64_t e = 0; e < m.cols; ++e) {
        const T p = std::max(row[e], T(0)) / denom;
        h -= p * std::log(p + static_cast<T>(kEntropyLogEps));
      }
      total += h;
    }
  });
  return total;
}

void entropy_reg_backward(const Tensor& dr, const Tensor& z, double coef) {
  DECO_CUDA_DISPATCH(z, cuda::entropy_reg_backward(dr, z, coef));
  const Matrix m = z.matrix();
  const int64_t E = m.cols;
  dispatch_float(z.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* pz = z.data<T>();
    T* pdr = dr.data<T>();
    const T c = static_cast<T>(coef);
    const T eps = static_cast<T>(kEntropyLogEps);
#pragma omp parallel
    {
      std::vector<T> dh_dp(static_cast<size_t>(E));
#pragma omp for schedule(static)
      for (int64_t t = 0; t < m.rows; ++t) {
        const T* row = pz + t * E;
        T sum = 0;
        for (int64_t e = 0; e < E; ++e) sum += std::max(row[e], T(0));
        const T denom = sum + static_cast<T>(kEntropySumEps);
        // H(p) = -sum p log(p+eps): dH/dp_e = -(log(p_e+eps) + p_e/(p_e+eps));
        // p_e = r_e/denom: dH/dr_j = (dH/dp_j - sum_e p_e dH/dp_e) / denom
        T weighted = 0;
        for (int64_t e = 0; e < E; ++e) {
          const T p = std::max(row[e], T(0)) / denom;
          dh_dp[static_cast<size_t>(e)] = -(std::log(p + eps) + p / (p + eps));
          weighted += p * dh_dp[static_cast<size_t>(e)];
        }
        for (int64_t e = 0; e < E; ++e)
          pdr[t * E + e] += c * (dh_dp[static_cast<size_t>(e)] - weighted) / denom;
      }
    }
  });
}

double l1_reg_forward(const Tensor& z) {
  if (z.device() == Device::CUDA) {
#ifdef DECO_WITH_CUDA
    return cuda::l1_reg_forward(z);
#else
    detail::no_cuda_kernel(__func__);
#endif
  }
  double total = 0.0;
  dispatch_float(z.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* pz = z.data<T>();
    for (int64_t i = 0; i < z.numel(); ++i) total += std::max(pz[i], T(0));
  });
  return total;
}

void router_statistics(const Tensor& out, const Tensor& z) {
  DECO_ASSERT(out.dtype() == DType::F64 && out.numel() == 3 && out.device() == z.device(),
              "router_statistics: out is float64 [3] on z's device");
  DECO_CUDA_DISPATCH(z, cuda::router_statistics(out, z));
  double* p = out.data<double>();
  p[0] = entropy_reg_forward(z);
  p[1] = l1_reg_forward(z);
  p[2] = static_cast<double>(count_idle_rows(z));
}

void l1_reg_backward(const Tensor& dr, const Tensor& z, double coef) {
  DECO_CUDA_DISPATCH(z, cuda::l1_reg_backward(dr, z, coef));
  // d(sum r)/dr = 1 everywhere; relu_route_backward masks the inactive entries.
  dispatch_float(z.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    T* pdr = dr.data<T>();
    for (int64_t i = 0; i < z.numel(); ++i) pdr[i] += static_cast<T>(coef);
  });
}

int64_t build_routing(const Tensor& expert_offsets, const Tensor& pair_token,
                      const Tensor& pair_flat, const Tensor& z) {
  if (z.device() == Device::CUDA) {
#ifdef DECO_WITH_CUDA
    return cuda::build_routing(expert_offsets, pair_token, pair_flat, z);
#else
    detail::no_cuda_kernel(__func__);
#endif
  }
  const Matrix m = z.matrix();
  const int64_t N = m.rows, E = m.cols;
  DECO_ASSERT(expert_offsets.numel() == E + 1 && pair_token.numel() >= N * E &&
                  pair_flat.numel() >= N * E, "build_routing shapes");
  int32_t* off = expert_offsets.data<int32_t>();
  int32_t* tok = pair_token.data<int32_t>();
  int32_t* flat = pair_flat.data<int32_t>();
  std::fill(off, off + E + 1, 0);
  dispatch_float(z.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* pz = z.data<T>();
    for (int64_t t = 0; t < N; ++t)
      for (int64_t e = 0; e < E; ++e) off[e + 1] += pz[t * E + e] > T(0);
    for (int64_t e = 0; e < E; ++e) off[e + 1] += off[e];
    std::vector<int32_t> cursor(off, off + E);
    for (int64_t t = 0; t < N; ++t)
      for (int64_t e = 0; e < E; ++e)
        if (pz[t * E + e] > T(0)) {
          const int32_t p = cursor[static_cast<size_t>(e)]++;
          tok[p] = static_cast<int32_t>(t);
          flat[p] = static_cast<int32_t>(t * E + e);
        }
  });
  return off[E];
}

}  // namespace deco::ops
