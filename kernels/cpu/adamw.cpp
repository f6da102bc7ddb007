// CPU reference: the fused AdamW update over a chunk table.
#include <algorithm>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/dispatch.h"
#include "kernels/math.h"
#include "kernels/ops.h"

namespace deco::ops {

std::vector<AdamWChunk> adamw_chunks(const std::vector<AdamWChunk>& segments) {
  std::vector<AdamWChunk> chunks;
  for (const AdamWChunk& s : segments) {
    DECO_ASSERT(s.offset >= 0 && s.moment_offset >= 0 && s.size >= 0 && (s.decay == 0 || s.decay == 1),
                "adamw_chunks: a segment needs non-negative offsets and size, and decay 0 or 1");
    for (int64_t begin = 0; begin < s.size; begin += kAdamWChunkElements)
      chunks.push_back({s.offset + begin, s.moment_offset + begin, std::min(kAdamWChunkElements, s.size - begin),
                        s.decay});
  }
  return chunks;
}

void adamw_update(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v, const Tensor& chunks,
                  const AdamWStep& hp) {
  DECO_ASSERT(grads.numel() == params.numel() && v.numel() == m.numel() && grads.dtype() == params.dtype() &&
                  m.dtype() == params.dtype() && v.dtype() == params.dtype(),
              "adamw_update: gradients like the parameters, two moment buffers alike, one dtype");
  DECO_ASSERT(chunks.dtype() == DType::I64 && chunks.ndim() == 2 && chunks.size(1) == 4 &&
                  chunks.device() == params.device(),
              "adamw_update: the chunk table is I64 [n, 4] on the parameters' device");
  DECO_CUDA_DISPATCH(params, cuda::adamw_update(params, grads, m, v, chunks, hp));
  const auto* table = static_cast<const AdamWChunk*>(chunks.raw());
  const int64_t n = chunks.size(0);
  for (int64_t c = 0; c < n; ++c) {
    const AdamWChunk& k = table[c];
    DECO_ASSERT(k.size >= 0 && k.offset >= 0 && k.offset + k.size <= params.numel() && k.moment_offset >= 0 &&
                    k.moment_offset + k.size <= m.numel(),
                "adamw_update: chunk ", c, " runs past its buffers");
  }
  dispatch_float(params.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* p = params.data<T>();
    const T* g = grads.data<T>();
    T* pm = m.data<T>();
    T* pv = v.data<T>();
    const math::AdamWConstants<T> constants = adamw_constants<T>(hp);
    // Elementwise, so the chunks' order and their threads do not change the result.
#pragma omp parallel for schedule(dynamic)
    for (int64_t c = 0; c < n; ++c) {
      const AdamWChunk k = table[c];
      const T decay = k.decay != 0 ? constants.decay_factor : T(1);
      for (int64_t i = 0; i < k.size; ++i)
        math::adamw_element(p[k.offset + i], pm[k.moment_offset + i], pv[k.moment_offset + i], g[k.offset + i],
                            constants, decay);
    }
  });
}

}  // namespace deco::ops
