// CPU reference: rotary position embedding and causal grouped-query attention.
// The reference materializes each head's S x S probabilities (saved for the
// backward pass); GPU kernels keep only the log-sum-exp instead.
#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "kernels/cpu/widen.h"
#include "kernels/cuda/attention_tc.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/dispatch.h"
#include "kernels/math.h"
#include "kernels/ops.h"

namespace deco::ops {
namespace {

// x[N, heads, hd], rotated in place; sign = +1 forward, -1 backward.
template <typename T> void rope_apply(const Tensor& x, const Tensor& table, int64_t S, T sign) {
  const int64_t n_tokens = x.size(0), heads = x.size(1), hd = x.size(2), half = hd / 2;
  T* px = x.data<T>();
  const T* pt = table.data<T>();
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < n_tokens; ++n) {
    const T* row = pt + (n % S) * half * 2;
    for (int64_t h = 0; h < heads; ++h) {
      T* v = px + (n * heads + h) * hd;
      for (int64_t i = 0; i < half; ++i) math::rope_rotate(v[i], v[i + half], row[2 * i], sign * row[2 * i + 1]);
    }
  }
}

// Row-major single-threaded GEMM on strided blocks; called inside the
// per-head parallel loop (the OpenMP build of OpenBLAS runs serially there).
inline void blas_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                      int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
              static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}
inline void blas_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
                      int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
              static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

// Causal attention only needs keys up to each query: queries are taken in
// blocks of kQueryBlock rows, and block [i0, i1) computes scores against keys
// [0, i1) only, which skips about half the work of the full S x S products
// at long sequence lengths.
constexpr int64_t kQueryBlock = 64;

template <typename T>
void attention_forward_cpu(const Tensor& out, const Tensor& probs, const Tensor& q, const Tensor& k,
                           const Tensor& v, const AttentionShape& s) {
  const int64_t S = s.seq, hd = s.head_dim, ldq = s.heads * hd, ldk = s.groups * hd;
  const int64_t heads_per_group = s.heads / s.groups;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
  const T* pq = q.data<T>();
  const T* pk = k.data<T>();
  const T* pv = v.data<T>();
  T* po = out.data<T>();
  T* pp = probs.data<T>();
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < s.batch * s.heads; ++bh) {
    const int64_t b = bh / s.heads, h = bh % s.heads, g = h / heads_per_group;
    const T* qb = pq + b * S * ldq + h * hd;
    const T* kb = pk + b * S * ldk + g * hd;
    const T* vb = pv + b * S * ldk + g * hd;
    T* P = pp + bh * S * S;
    for (int64_t i0 = 0; i0 < S; i0 += kQueryBlock) {
      const int64_t i1 = std::min(S, i0 + kQueryBlock);
      // scores = scale * Q K^T for this block of queries against keys [0, i1)
      blas_gemm(false, true, i1 - i0, i1, hd, scale, qb + i0 * ldq, ldq, kb, ldk, T(0), P + i0 * S, S);
      for (int64_t i = i0; i < i1; ++i) {
        T* row = P + i * S;
        T mx = row[0];
        for (int64_t j = 1; j <= i; ++j) mx = std::max(mx, row[j]);
        for (int64_t j = 0; j <= i; ++j) row[j] = std::exp(row[j] - mx);
        T sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += row[j];
        const T inv = T(1) / sum;
        for (int64_t j = 0; j <= i; ++j) row[j] *= inv;
        for (int64_t j = i + 1; j < S; ++j) row[j] = 0;  // causal mask
      }
      blas_gemm(false, false, i1 - i0, hd, i1, T(1), P + i0 * S, S, vb, ldk, T(0), po + (b * S + i0) * ldq + h * hd, ldq);
    }
  }
}

template <typename T>
void attention_backward_cpu(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                            const Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v,
                            const AttentionShape& s) {
  const int64_t S = s.seq, hd = s.head_dim, ldq = s.heads * hd, ldk = s.groups * hd;
  const int64_t heads_per_group = s.heads / s.groups;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
  const T* pq = q.data<T>();
  const T* pk = k.data<T>();
  const T* pv = v.data<T>();
  const T* pdo = dout.data<T>();
  const T* pp = probs.data<T>();
  T* pdq = dq.data<T>();
  T* pdk = dk.data<T>();
  T* pdv = dv.data<T>();
  // Heads of one kv group accumulate into the same dk/dv block, so the
  // parallel unit is (batch, group) and its heads run in order.
#pragma omp parallel
  {
    std::vector<T> dP(static_cast<size_t>(std::min(kQueryBlock, S) * S));
#pragma omp for schedule(dynamic)
    for (int64_t bg = 0; bg < s.batch * s.groups; ++bg) {
      const int64_t b = bg / s.groups, g = bg % s.groups;
      const T* kb = pk + b * S * ldk + g * hd;
      const T* vb = pv + b * S * ldk + g * hd;
      T* dkb = pdk + b * S * ldk + g * hd;
      T* dvb = pdv + b * S * ldk + g * hd;
      for (int64_t i = 0; i < S; ++i)
        for (int64_t d = 0; d < hd; ++d) dkb[i * ldk + d] = dvb[i * ldk + d] = T(0);
      for (int64_t h = g * heads_per_group; h < (g + 1) * heads_per_group; ++h) {
        const T* P = pp + (b * s.heads + h) * S * S;
        const T* qb = pq + b * S * ldq + h * hd;
        const T* dob = pdo + b * S * ldq + h * hd;
        T* dqb = pdq + b * S * ldq + h * hd;
        for (int64_t i0 = 0; i0 < S; i0 += kQueryBlock) {
          const int64_t i1 = std::min(S, i0 + kQueryBlock), rows = i1 - i0;
          const T* Pb = P + i0 * S;
          // dV[0:i1] += P^T dO ; dP = dO V^T, then dScores = P * (dP - rowsum(dP * P))
          blas_gemm(true, false, i1, hd, rows, T(1), Pb, S, dob + i0 * ldq, ldq, T(1), dvb, ldk);
          blas_gemm(false, true, rows, i1, hd, T(1), dob + i0 * ldq, ldq, vb, ldk, T(0), dP.data(), S);
          for (int64_t i = i0; i < i1; ++i) {
            T* row = dP.data() + (i - i0) * S;
            const T* prow = P + i * S;
            T dot = 0;
            for (int64_t j = 0; j <= i; ++j) dot += row[j] * prow[j];
            for (int64_t j = 0; j <= i; ++j) row[j] = prow[j] * (row[j] - dot);
            for (int64_t j = i + 1; j < i1; ++j) row[j] = 0;
          }
          // dQ = scale * dS K ; dK[0:i1] += scale * dS^T Q
          blas_gemm(false, false, rows, hd, i1, scale, dP.data(), S, kb, ldk, T(0), dqb + i0 * ldq, ldq);
          blas_gemm(true, false, i1, hd, rows, scale, dP.data(), S, qb + i0 * ldq, ldq, T(1), dkb, ldk);
        }
      }
    }
  }
}

void check_attention_shapes(const Tensor& q, const Tensor& k, const Tensor& v,
                            const AttentionShape& s) {
  DECO_ASSERT(s.heads % s.groups == 0, "groups must divide heads");
  DECO_ASSERT(q.numel() == s.batch * s.seq * s.heads * s.head_dim, "q shape ", q.shape().to_string());
  DECO_ASSERT(k.numel() == s.batch * s.seq * s.groups * s.head_dim, "k shape ", k.shape().to_string());
  DECO_ASSERT(v.numel() == k.numel(), "v shape ", v.shape().to_string());
}

}  // namespace

void rope_table(const Tensor& table, double base) {
  if (table.device() != Device::CPU) {
    // Computed here and copied, so a device table is bit-identical to the CPU's.
    Buffer host(table.dtype(), Device::CPU, table.shape());
    rope_table(host, base);
    copy(table, host);
    return;
  }
  const int64_t S = table.size(0), half = table.size(1);
  const int64_t hd = 2 * half;
  dispatch_float(table.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    T* p = table.data<T>();
    for (int64_t pos = 0; pos < S; ++pos)
      for (int64_t i = 0; i < half; ++i) {
        const double theta = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
        const double angle = static_cast<double>(pos) * theta;
        p[(pos * half + i) * 2] = static_cast<T>(std::cos(angle));
        p[(pos * half + i) * 2 + 1] = static_cast<T>(std::sin(angle));
      }
  });
}

void rope_forward(const Tensor& x, const Tensor& table, int64_t seq) {
  DECO_ASSERT(x.ndim() == 3 && table.size(1) * 2 == x.size(2) && seq <= table.size(0) &&
                  x.size(0) % seq == 0, "rope_forward shapes");
  DECO_CUDA_DISPATCH(x, cuda::rope_forward(x, table, seq));
  if (cpu::any_bf16({&x, &table})) {
    cpu::Widen w;
    rope_forward(w.out(x, true), w.in(table), seq);
    return;
  }
  dispatch_float(x.dtype(), [&](auto tag) { rope_apply(x, table, seq, decltype(tag)(1)); });
}

void rope_backward(const Tensor& dx, const Tensor& table, int64_t seq) {
  DECO_ASSERT(dx.ndim() == 3 && table.size(1) * 2 == dx.size(2) && seq <= table.size(0) &&
                  dx.size(0) % seq == 0, "rope_backward shapes");
  DECO_CUDA_DISPATCH(dx, cuda::rope_backward(dx, table, seq));
  if (cpu::any_bf16({&dx, &table})) {
    cpu::Widen w;
    rope_backward(w.out(dx, true), w.in(table), seq);
    return;
  }
  dispatch_float(dx.dtype(), [&](auto tag) { rope_apply(dx, table, seq, decltype(tag)(-1)); });
}

Shape attention_saved_shape(Device device, const AttentionShape& s) {
  if (device == Device::CPU) return Shape{s.batch, s.heads, s.seq, s.seq};
  return Shape{s.batch, s.heads, s.seq};
}

void attention_forward(const Tensor& out, const Tensor& saved, const Tensor& q, const Tensor& k,
                       const Tensor& v, const AttentionShape& shape) {
  check_attention_shapes(q, k, v, shape);
  DECO_ASSERT(saved.shape() == attention_saved_shape(q.device(), shape), "attention saved shape ",
              saved.shape().to_string(), ", expected ", attention_saved_shape(q.device(), shape).to_string());
  DECO_CUDA_DISPATCH(q, cuda::attention_forward(out, saved, q, k, v, shape));
  if (cpu::any_bf16({&out, &saved, &q, &k, &v})) {
    cpu::Widen w;
    attention_forward(w.out(out), w.out(saved), w.in(q), w.in(k), w.in(v), shape);
    return;
  }
  dispatch_float(q.dtype(), [&](auto tag) {
    attention_forward_cpu<decltype(tag)>(out, saved, q, k, v, shape);
  });
}

namespace {
std::atomic<bool> g_attention_tensor_cores{true};
}  // namespace

void set_attention_tensor_cores(bool enabled) { g_attention_tensor_cores = enabled; }
bool attention_tensor_cores() { return g_attention_tensor_cores; }

bool gpu_attention_on_tensor_cores(DType dtype, int64_t head_dim) {
#ifdef DECO_WITH_CUDA
  return attention_tensor_cores() && cuda::tc_attention_supports(dtype, head_dim);
#else
  (void)dtype;
  (void)head_dim;
  return false;
#endif
}

void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& out, const Tensor& saved, const Tensor& q, const Tensor& k,
                        const Tensor& v, const AttentionShape& shape) {
  check_attention_shapes(q, k, v, shape);
  DECO_ASSERT(out.numel() == q.numel() && dout.numel() == q.numel(), "attention_backward: out and dout have ",
              out.numel(), " and ", dout.numel(), " elements, q ", q.numel());
  if (q.device() == Device::CUDA) {
    DECO_ASSERT(saved.shape() == attention_saved_shape(Device::CUDA, shape), "attention saved shape ",
                saved.shape().to_string(), ", expected the log-sum-exp ",
                attention_saved_shape(Device::CUDA, shape).to_string());
  }
  DECO_CUDA_DISPATCH(q, cuda::attention_backward(dq, dk, dv, dout, out, saved, q, k, v, shape));
  if (cpu::any_bf16({&dq, &dk, &dv, &dout, &saved, &q, &k, &v})) {
    cpu::Widen w;  // out is not read on the CPU: it passes through unwidened
    attention_backward(w.out(dq), w.out(dk), w.out(dv), w.in(dout), out, w.in(saved), w.in(q), w.in(k), w.in(v),
                       shape);
    return;
  }
  dispatch_float(q.dtype(), [&](auto tag) {
    attention_backward_cpu<decltype(tag)>(dq, dk, dv, dout, saved, q, k, v, shape);
  });
}

}  // namespace deco::ops
