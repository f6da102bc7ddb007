// The attention tests' independent check of the saved log-sum-exp (the GPU
// keeps it instead of the CPU reference's probabilities).
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/tensor.h"
#include "kernels/ops.h"

namespace deco::gpu_test {

// The row log-sum-exp of the causal scores, in double from the float32
// inputs: what the GPU saves instead of the CPU's probabilities.
inline Buffer attention_lse_reference(const Buffer& q, const Buffer& k, const ops::AttentionShape& s) {
  Buffer lse(DType::F64, Device::CPU, {s.batch, s.heads, s.seq});
  const int64_t S = s.seq, hd = s.head_dim, ldq = s.heads * hd, ldk = s.groups * hd;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const float* pq = q.data<float>();
  const float* pk = k.data<float>();
  std::vector<double> scores(static_cast<size_t>(S));
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h) {
      const int64_t g = h / (s.heads / s.groups);
      for (int64_t i = 0; i < S; ++i) {
        double mx = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          double dot = 0.0;
          for (int64_t d = 0; d < hd; ++d)
            dot += static_cast<double>(pq[(b * S + i) * ldq + h * hd + d]) * pk[(b * S + j) * ldk + g * hd + d];
          scores[static_cast<size_t>(j)] = dot * scale;
          mx = std::max(mx, dot * scale);
        }
        double z = 0.0;
        for (int64_t j = 0; j <= i; ++j) z += std::exp(scores[static_cast<size_t>(j)] - mx);
        lse.data<double>()[(b * s.heads + h) * S + i] = mx + std::log(z);
      }
    }
  return lse;
}

}  // namespace deco::gpu_test
