// CPU reference: RMSNorm and the DECO expert activation NormSiLU.
#include <cmath>
#include <vector>

#include "core/caching_allocator.h"
#include "kernels/cpu/widen.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/dispatch.h"
#include "kernels/cpu/parallel.h"
#include "kernels/math.h"
#include "kernels/ops.h"

namespace deco::ops {

void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     double eps) {
  DECO_ASSERT(weight.numel() == x.shape()[-1] && rstd.numel() * x.shape()[-1] == x.numel() &&
                  out.numel() == x.numel(),
              "rmsnorm_forward shapes");  // before the dispatch: the CUDA kernels trust them
  DECO_CUDA_DISPATCH(x, cuda::rmsnorm_forward(out, rstd, x, weight, eps));
  if (cpu::any_bf16({&out, &rstd, &x, &weight})) {
    cpu::Widen w;
    rmsnorm_forward(w.out(out), w.out(rstd), w.in(x), w.in(weight), eps);
    return;
  }
  const Matrix m = x.matrix();
  dispatch_float(x.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* px = x.data<T>();
    const T* pw = weight.data<T>();
    T* po = out.data<T>();
    T* pr = rstd.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < m.rows; ++r) {
      const T* row = px + r * m.cols;
      T ss = 0;  // statistics in the compute dtype: float32 or float64 on the CPU
      for (int64_t c = 0; c < m.cols; ++c) ss += row[c] * row[c];
      const T rs = T(1) / std::sqrt(ss / static_cast<T>(m.cols) + static_cast<T>(eps));
      pr[r] = rs;
      for (int64_t c = 0; c < m.cols; ++c) po[r * m.cols + c] = row[c] * rs * pw[c];
    }
  });
}

void residual_rmsnorm_forward(const Tensor& sum, const Tensor& out, const Tensor& rstd, const Tensor& residual,
                              const Tensor& branch, const Tensor& weight, double eps) {
  DECO_ASSERT(residual.numel() == sum.numel() && branch.numel() == sum.numel() && out.numel() == sum.numel() &&
                  weight.numel() == sum.shape()[-1] && rstd.numel() * weight.numel() == sum.numel(),
              "residual_rmsnorm_forward shapes");
  DECO_CUDA_DISPATCH(sum, cuda::residual_rmsnorm_forward(sum, out, rstd, residual, branch, weight, eps));
  if (cpu::any_bf16({&sum, &out, &rstd, &residual, &branch, &weight})) {
    // The norm reads the rounded sum, as the stream holds it.
    {
      cpu::Widen w;
      const Tensor s = w.out(sum), a = w.in(residual), b = w.in(branch);
      copy(s, a);
      axpy(s, b);
    }
    rmsnorm_forward(out, rstd, sum, weight, eps);
    return;
  }
  const Matrix m = sum.matrix();
  dispatch_float(sum.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* pa = residual.data<T>();
    const T* pb = branch.data<T>();
    const T* pw = weight.data<T>();
    T* ps = sum.data<T>();
    T* po = out.data<T>();
    T* pr = rstd.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < m.rows; ++r) {
      T* row = ps + r * m.cols;
      T ss = 0;  // as rmsnorm_forward accumulates, over the stored sums
      for (int64_t c = 0; c < m.cols; ++c) {
        row[c] = pa[r * m.cols + c] + pb[r * m.cols + c];
        ss += row[c] * row[c];
      }
      const T rs = T(1) / std::sqrt(ss / static_cast<T>(m.cols) + static_cast<T>(eps));
      pr[r] = rs;
      for (int64_t c = 0; c < m.cols; ++c) po[r * m.cols + c] = row[c] * rs * pw[c];
    }
  });
}

void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd) {
  DECO_ASSERT(weight.numel() == x.shape()[-1] && dweight.numel() == weight.numel() &&
                  rstd.numel() * weight.numel() == x.numel() && dx.numel() == x.numel() && dout.numel() == x.numel(),
              "rmsnorm_backward shapes");
  DECO_CUDA_DISPATCH(x, cuda::rmsnorm_backward(dx, dweight, dout, x, weight, rstd));
  if (cpu::any_bf16({&dx, &dweight, &dout, &x, &weight, &rstd})) {
    cpu::Widen w;
    rmsnorm_backward(w.out(dx, true), w.out(dweight, true), w.in(dout), w.in(x), w.in(weight), w.in(rstd));
    return;
  }
  const Matrix m = x.matrix();
  const int64_t cols = m.cols;
  dispatch_float(x.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* px = x.data<T>();
    const T* pw = weight.data<T>();
    const T* pd = dout.data<T>();
    const T* pr = rstd.data<T>();
    T* pdx = dx.data<T>();
    // dx = rs * (w*dy - xhat * mean(w*dy*xhat)), xhat = x*rs; dweight = sum over rows of dy * xhat
    cpu::for_rows_reduce(m.rows, cols, dweight.data<T>(), [&](int64_t r, T* dw) {
      const T rs = pr[r];
      const T* xr = px + r * cols;
      const T* dr = pd + r * cols;
      T dot = 0;
      for (int64_t c = 0; c < cols; ++c) {
        dot += pw[c] * dr[c] * xr[c] * rs;
        dw[c] += dr[c] * xr[c] * rs;
      }
      const T mean_dot = dot / static_cast<T>(cols);
      for (int64_t c = 0; c < cols; ++c) pdx[r * cols + c] += rs * (pw[c] * dr[c] - xr[c] * rs * mean_dot);
    });
  });
}

void normsilu_scaled_forward(const Tensor& ga, const Tensor& act, const Tensor& xhat, const Tensor& rs,
                             const Tensor& u, const Tensor& mean, const Tensor& block_token, int64_t blocks_per_token,
                             const Tensor& gamma, const Tensor& score, ExpertAct variant, double eps) {
  DECO_CUDA_DISPATCH(u, cuda::normsilu_scaled_forward(ga, act, xhat, rs, u, mean, block_token, blocks_per_token, gamma,
                                                      score, variant, eps));
  normsilu_forward(act, xhat, rs, u, mean, block_token, blocks_per_token, gamma, variant, eps);
  scale_rows(ga, act, score);
}

void normsilu_scaled_backward(const Tensor& dc, const Tensor& dscore, const Tensor& dgamma, const Tensor& q,
                              const Tensor& act, const Tensor& xhat, const Tensor& rs, const Tensor& gamma,
                              const Tensor& score, ExpertAct variant) {
  DECO_CUDA_DISPATCH(q, cuda::normsilu_scaled_backward(dc, dscore, dgamma, q, act, xhat, rs, gamma, score, variant));
  row_dot(dscore, q, act);
  // ga = act * score: dact = q * score, in a scratch buffer kept between
  // calls (it grows to the largest call; workspace, not the model's activations).
  thread_local Buffer dact;
  {
    MemoryCategoryScope scope(MemoryCategory::Workspace);
    dact.ensure(q.dtype(), Device::CPU, q.shape());
  }
  scale_rows(dact, q, score);
  normsilu_backward(dc, dgamma, dact, xhat, rs, gamma, variant);
}

bool expert_act_has_mean(ExpertAct act) {
  return act == ExpertAct::NormSilu || act == ExpertAct::NormSiluNorms;
}
bool expert_act_has_rms(ExpertAct act) {
  return act == ExpertAct::NormSilu || act == ExpertAct::NormSiluNoMean;
}

void normsilu_forward(const Tensor& act, const Tensor& xhat, const Tensor& rs, const Tensor& u,
                      const Tensor& mean, const Tensor& block_token, int64_t blocks_per_token,
                      const Tensor& gamma, ExpertAct variant, double eps) {
  DECO_CUDA_DISPATCH(u, cuda::normsilu_forward(act, xhat, rs, u, mean, block_token, blocks_per_token, gamma,
                                               variant, eps));
  if (cpu::any_bf16({&act, &xhat, &rs, &u, &mean, &gamma})) {
    cpu::Widen w;
    normsilu_forward(w.out(act), w.out(xhat), w.out(rs), w.in(u), w.in(mean), block_token, blocks_per_token,
                     w.in(gamma), variant, eps);
    return;
  }
  const Matrix m = u.matrix();  // [P, D]
  const int64_t D = m.cols;
  const bool has_mean = expert_act_has_mean(variant), has_rms = expert_act_has_rms(variant);
  const int32_t* bt = block_token.defined() ? block_token.data<int32_t>() : nullptr;
  DECO_ASSERT(bt != nullptr || blocks_per_token > 0, "normsilu_forward needs a block-to-token map");
  dispatch_float(u.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* pu = u.data<T>();
    const T* pm = has_mean ? mean.data<T>() : nullptr;
    const T* pg = has_rms ? gamma.data<T>() : nullptr;
    T* pa = act.data<T>();
    T* px = xhat.data<T>();
    T* pr = has_rms ? rs.data<T>() : nullptr;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < m.rows; ++b) {
      const int64_t token = bt ? bt[b] : b / blocks_per_token;
      const T shift = has_mean ? pm[token] : T(0);
      T* xb = px + b * D;
      for (int64_t d = 0; d < D; ++d) xb[d] = pu[b * D + d] - shift;
      if (has_rms) {
        T ss = 0;
        for (int64_t d = 0; d < D; ++d) ss += xb[d] * xb[d];
        const T r = T(1) / std::sqrt(ss / static_cast<T>(D) + static_cast<T>(eps));
        pr[b] = r;
        for (int64_t d = 0; d < D; ++d) {
          xb[d] *= r;
          pa[b * D + d] = math::silu(xb[d] * pg[d]);
        }
      } else {
        for (int64_t d = 0; d < D; ++d) pa[b * D + d] = math::silu(xb[d]);
      }
    }
  });
}

void normsilu_backward(const Tensor& dc, const Tensor& dgamma, const Tensor& dact,
                       const Tensor& xhat, const Tensor& rs, const Tensor& gamma,
                       ExpertAct variant) {
  DECO_CUDA_DISPATCH(dact, cuda::normsilu_backward(dc, dgamma, dact, xhat, rs, gamma, variant));
  if (cpu::any_bf16({&dc, &dgamma, &dact, &xhat, &rs, &gamma})) {
    cpu::Widen w;
    normsilu_backward(w.out(dc), w.out(dgamma, true), w.in(dact), w.in(xhat), w.in(rs), w.in(gamma), variant);
    return;
  }
  const Matrix m = dact.matrix();  // [P, D]
  const int64_t D = m.cols;
  const bool has_rms = expert_act_has_rms(variant);
  dispatch_float(dact.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* pda = dact.data<T>();
    const T* px = xhat.data<T>();
    T* pdc = dc.data<T>();
    if (!has_rms) {
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < m.rows * D; ++i) pdc[i] = pda[i] * math::silu_grad(px[i]);
    } else {
      const T* pg = gamma.data<T>();
      const T* pr = rs.data<T>();
      // n = xhat*gamma, act = silu(n): dn = dact * silu'(n), dgamma += dn * xhat,
      // dxhat = dn * gamma, dc = rs * (dxhat - xhat * mean(dxhat * xhat))  (RMSNorm backward per block)
      cpu::for_rows_reduce(m.rows, D, dgamma.data<T>(), [&](int64_t b, T* dg) {
        const T* xb = px + b * D;
        T* db = pdc + b * D;
        T dot = 0;
        for (int64_t d = 0; d < D; ++d) {
          const T dn = pda[b * D + d] * math::silu_grad(xb[d] * pg[d]);
          dg[d] += dn * xb[d];
          db[d] = dn * pg[d];  // dxhat
          dot += db[d] * xb[d];
        }
        const T mean_dot = dot / static_cast<T>(D);
        for (int64_t d = 0; d < D; ++d) db[d] = pr[b] * (db[d] - xb[d] * mean_dot);
      });
    }
  });
}

}  // namespace deco::ops
