// CPU reference: the LM head fused with cross-entropy, chunked over tokens.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/widen.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/dispatch.h"
#include "kernels/ops.h"

namespace deco::ops {

double lm_head_cross_entropy(const Tensor& dx, const Tensor& dw, const Tensor& logits,
                             const Tensor& x, const Tensor& w, const Tensor& targets,
                             double grad_scale) {
  const int64_t N = x.size(0), V = w.size(0), chunk = logits.size(0);
  DECO_ASSERT(logits.size(1) == V && targets.numel() == N && (chunk > 0 || N == 0), "lm_head_cross_entropy shapes");
#ifdef DECO_WITH_CUDA
  if (x.device() == Device::CUDA) return cuda::lm_head_cross_entropy(dx, dw, logits, x, w, targets, grad_scale);
#else
  DECO_REQUIRE_CPU(x);
#endif
  if (cpu::any_bf16({&dx, &dw, &logits, &x, &w})) {
    cpu::Widen wide;
    return lm_head_cross_entropy(wide.out(dx), wide.out(dw, true), wide.out(logits), wide.in(x), wide.in(w), targets,
                                 grad_scale);
  }
  const bool backward = dx.defined();
  const int32_t* tgt = targets.data<int32_t>();
  double loss = 0.0;
  std::vector<double> row_loss;
  for (int64_t c0 = 0; c0 < N; c0 += chunk) {
    const int64_t rows = std::min(chunk, N - c0);
    const Tensor xc = x.slice(c0, c0 + rows);
    const Tensor lc = logits.slice(0, rows);
    linear_forward(lc, xc, w);
    for (int64_t r = 0; r < rows; ++r)  // checked before the parallel loop: no throwing inside it
      DECO_ASSERT(tgt[c0 + r] >= 0 && tgt[c0 + r] < V, "target id ", tgt[c0 + r], " outside the vocabulary");
    row_loss.assign(static_cast<size_t>(rows), 0.0);
    dispatch_float(x.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
      T* pl = lc.data<T>();
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        T* row = pl + r * V;
        const int32_t target = tgt[c0 + r];
        T mx = row[0];
        for (int64_t j = 1; j < V; ++j) mx = std::max(mx, row[j]);
        // exp in the compute dtype (each term is in (0, 1] after the shift),
        // the sum and the log in double.
        const T logit_target = row[target];
        for (int64_t j = 0; j < V; ++j) row[j] = std::exp(row[j] - mx);
        double sum = 0.0;
        for (int64_t j = 0; j < V; ++j) sum += row[j];
        row_loss[static_cast<size_t>(r)] =
            static_cast<double>(mx) + std::log(sum) - static_cast<double>(logit_target);
        if (backward) {  // dlogits = grad_scale * (softmax - onehot), written over the logits
          const T scale = static_cast<T>(grad_scale / sum);
          for (int64_t j = 0; j < V; ++j) row[j] *= scale;
          row[target] -= static_cast<T>(grad_scale);
        }
      }
    });
    for (double l : row_loss) loss += l;  // in token order: deterministic
    if (backward) {
      linear_backward_input(dx.slice(c0, c0 + rows), lc, w, false);
      linear_backward_weight(dw, lc, xc);
    }
  }
  return loss;
}

}  // namespace deco::ops
