// CUDA: the fused multi-tensor AdamW (kernels/cpu/adamw.cpp's semantics).
// One launch updates every chunk of the table, so a model's few hundred
// parameter tensors cost one kernel, not one each. A block owns one chunk
// (at most kAdamWChunkElements elements, so blocks carry similar work) and
// its threads stride through it with coalesced accesses; the arithmetic is
// kernels/math.h's adamw_element, the one the CPU reference runs.
#include "kernels/cuda/check.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/dispatch.h"
#include "kernels/math.h"

namespace deco::cuda {
namespace {

constexpr int kAdamWThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kAdamWThreads)
    adamw_kernel(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v,
                 const ops::AdamWChunk* __restrict__ chunks, const math::AdamWConstants<T> constants) {
  const ops::AdamWChunk chunk = chunks[blockIdx.x];
  const T decay = chunk.decay != 0 ? constants.decay_factor : T(1);
  T* pc = p + chunk.offset;
  const T* gc = g + chunk.offset;
  T* mc = m + chunk.moment_offset;
  T* vc = v + chunk.moment_offset;
  // size <= kAdamWChunkElements, so an int index suffices.
  const int size = static_cast<int>(chunk.size);
  for (int i = static_cast<int>(threadIdx.x); i < size; i += kAdamWThreads) {
    T pi = pc[i], mi = mc[i], vi = vc[i];
    math::adamw_element(pi, mi, vi, gc[i], constants, decay);
    pc[i] = pi;
    mc[i] = mi;
    vc[i] = vi;
  }
}

}  // namespace

void adamw_update(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v, const Tensor& chunks,
                  const ops::AdamWStep& hp) {
  static_assert(ops::kAdamWChunkElements <= (int64_t{1} << 30), "a chunk's index is an int");
  const int64_t n = chunks.size(0);
  if (n == 0) return;
  DECO_ASSERT(n <= 0x7fffffff, "adamw_update: more chunks than a grid holds");
  const auto* table = static_cast<const ops::AdamWChunk*>(chunks.raw());
  dispatch_float(params.dtype(), [&](auto tag) {
    using T = decltype(tag);
    adamw_kernel<T><<<static_cast<unsigned>(n), kAdamWThreads, 0, current_stream()>>>(
        params.data<T>(), grads.data<T>(), m.data<T>(), v.data<T>(), table, ops::adamw_constants<T>(hp));
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

}  // namespace deco::cuda
