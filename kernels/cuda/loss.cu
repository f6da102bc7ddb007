// CUDA: the LM head fused with cross-entropy (kernels/cpu/loss.cpp's
// semantics). Chunks of tokens go through a cuBLASLt GEMM into the logits
// workspace; one block per token row then takes the row's max, the sum of
// exponentials (in double, as the CPU) and the loss, and writes the logits'
// gradient over them; two GEMMs take it back to x and w. The per-token losses
// stay on the device and are summed on the host in token order once, at the
// end (one wait for the GPU per call: the bad-target flag, then the losses
// right behind it), the same sum the CPU forms.
#include <type_traits>
#include <vector>

#include "kernels/cuda/check.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/storage.cuh"
#include "kernels/dispatch.h"

namespace deco::cuda {
namespace {

constexpr int kThreads = 256;

// Row r of the chunk: loss[first + r] = max + log(sum exp(l - max)) - l[target];
// with backward, the row becomes grad_scale * (softmax - onehot). A target
// outside [0, V) sets *bad to 1 (checked on the host) and leaves the row.
// bfloat16 logits: the arithmetic in float32, and the exponentials taken
// again for the gradient rather than kept in the row (rounded, they would
// round the gradient twice).
template <typename T>
__global__ void cross_entropy_rows_kernel(T* logits, double* loss, int* bad, const int32_t* targets, int64_t first,
                                          int64_t V, bool backward, double grad_scale) {
  using A = acc_t<T>;
  __shared__ A tmax[kThreads];
  __shared__ double tsum[kThreads];
  const int64_t r = blockIdx.x;
  T* row = logits + r * V;
  const int32_t target = targets[first + r];
  if (target < 0 || target >= V) {
    if (threadIdx.x == 0) {
      *bad = 1;
      loss[first + r] = 0.0;
    }
    return;
  }
  constexpr bool keep_exp = std::is_same_v<T, A>;  // float32 and float64: the row holds the exponentials
  A mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = max(mx, ld(row[j]));
  mx = block_max(mx, tmax);
  const A logit_target = ld(row[target]);
  __syncthreads();  // every thread has read row[target] before it is overwritten
  double sum = 0.0;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const A e = exp(ld(row[j]) - mx);
    if constexpr (keep_exp) row[j] = e;
    sum += static_cast<double>(e);
  }
  sum = block_sum(sum, tsum);
  if (threadIdx.x == 0) loss[first + r] = static_cast<double>(mx) + log(sum) - static_cast<double>(logit_target);
  if (!backward) return;
  const A scale = static_cast<A>(grad_scale / sum);
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    A e;
    if constexpr (keep_exp)
      e = ld(row[j]);
    else
      e = exp(ld(row[j]) - mx);
    const A g = e * scale;
    row[j] = st<T>(j == target ? g - static_cast<A>(grad_scale) : g);
  }
}

}  // namespace

double lm_head_cross_entropy(const Tensor& dx, const Tensor& dw, const Tensor& logits, const Tensor& x,
                             const Tensor& w, const Tensor& targets, double grad_scale) {
  const int64_t N = x.size(0), V = w.size(0), chunk = logits.size(0);
  const bool backward = dx.defined();
  DECO_ASSERT(targets.device() == Device::CUDA && targets.dtype() == DType::I32 && targets.numel() >= N,
              "lm_head_cross_entropy: the targets are read on the GPU: int32 device memory, one per token");
  Buffer row_loss(DType::F64, Device::CUDA, Shape{std::max<int64_t>(N, 1)});
  Buffer bad(DType::I32, Device::CUDA, Shape{1});
  for (int64_t c0 = 0; c0 < N; c0 += chunk) {
    const int64_t rows = std::min(chunk, N - c0);
    const Tensor xc = x.slice(c0, c0 + rows);
    const Tensor lc = logits.slice(0, rows);
    ops::linear_forward(lc, xc, w);
    dispatch_activation(logits.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cross_entropy_rows_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, current_stream()>>>(
          ptr<T>(lc), row_loss.data<double>(), bad.data<int32_t>(), targets.data<int32_t>(), c0, V, backward,
          grad_scale);
    });
    DECO_CUDA_CHECK(cudaGetLastError());
    if (backward) {
      ops::linear_backward_input(dx.slice(c0, c0 + rows), lc, w, false);
      ops::linear_backward_weight(dw, lc, xc);
    }
  }
  std::vector<double> host(static_cast<size_t>(N));
  int host_bad = 0;
  device_copy(Device::CPU, &host_bad, Device::CUDA, bad.tensor().raw(), sizeof(int));
  DECO_ASSERT(host_bad == 0, "a target id outside the vocabulary [0, ", V, ") reached lm_head_cross_entropy");
  if (N > 0)
    device_copy(Device::CPU, host.data(), Device::CUDA, row_loss.tensor().raw(),
                static_cast<size_t>(N) * sizeof(double));
  double loss = 0.0;
  for (double l : host) loss += l;  // in token order, as the CPU
  return loss;
}

}  // namespace deco::cuda
