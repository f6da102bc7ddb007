// The sparse expert path's grouped GEMM on the GPU: one cuBLAS call for all
// experts, cublasGemmGroupedBatchedEx with one group per expert that has
// pairs (each its own m, n or k: its number of pairs). A GEMM per expert
// through cuBLASLt, what this replaces, launches E kernels per grouped GEMM:
// at 102 experts and six grouped GEMMs a DECO layer's step, some 600
// launches a layer. Whether cuBLAS's grouped kernel or a hand-written one
// (a 64-wide tile per expert, the gather fused into its loads) is faster at
// D = 64 is for measurement on a GPU; this is the library's answer.
//
// float32 or bfloat16 operands with float32 accumulation. The grouped call
// takes one type for A, B and C (bf16 x bf16 -> bf16, or float32 throughout);
// bf16 x bf16 -> float32, the weight gradients' case, is not among its type
// combinations, so those run one cuBLASLt GEMM per expert. float64 (tests
// only) keeps a cuBLAS GEMM per expert.
#include <cublas_v2.h>

#include <vector>

#include "kernels/cuda/check.h"
#include "kernels/cuda/cuda_ops.h"

namespace deco::cuda {
namespace {

cudaDataType_t blas_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    default: fail("the grouped GEMM takes float32 or bfloat16 matrices on the GPU, not ", dtype_name(dtype), ".");
  }
}

}  // namespace

void grouped_gemm_batched(const std::vector<GroupedProblem>& problems, bool trans_a, bool trans_b, float alpha,
                          float beta) {
  if (problems.empty()) return;
  const Matrix& first_c = problems.front().C;
  const Matrix& first_a = problems.front().A;
  const Matrix& first_b = problems.front().B;
  if (first_c.dtype != first_a.dtype || first_b.dtype != first_a.dtype) {
    for (const GroupedProblem& p : problems) gemm_lt(p.C, p.A, trans_a, p.B, trans_b, alpha, beta);
    return;
  }
  const int groups = static_cast<int>(problems.size());
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLAS's
  // first operand is B's memory, its second A's, and its m x n is our n x m.
  std::vector<cublasOperation_t> ta(static_cast<size_t>(groups), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
  std::vector<cublasOperation_t> tb(static_cast<size_t>(groups), trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
  std::vector<int> m, n, k, lda, ldb, ldc, size(static_cast<size_t>(groups), 1);
  std::vector<float> alphas(static_cast<size_t>(groups), alpha), betas(static_cast<size_t>(groups), beta);
  std::vector<const void*> pointers;  // A (B's memory), B (A's memory), C, each `groups` long
  pointers.reserve(static_cast<size_t>(3 * groups));
  for (const GroupedProblem& p : problems) {
    DECO_ASSERT(p.A.dtype == first_a.dtype && p.B.dtype == first_b.dtype && p.C.dtype == first_c.dtype,
                "grouped_gemm: one dtype per operand across experts");
    m.push_back(static_cast<int>(p.C.cols));
    n.push_back(static_cast<int>(p.C.rows));
    k.push_back(static_cast<int>(trans_a ? p.A.rows : p.A.cols));
    lda.push_back(static_cast<int>(p.B.ld));
    ldb.push_back(static_cast<int>(p.A.ld));
    ldc.push_back(static_cast<int>(p.C.ld));
  }
  for (const GroupedProblem& p : problems) pointers.push_back(p.B.ptr);
  for (const GroupedProblem& p : problems) pointers.push_back(p.A.ptr);
  for (const GroupedProblem& p : problems) pointers.push_back(p.C.ptr);
  // The pointer arrays live in device memory (cuBLAS reads them on the GPU);
  // freed to the caching allocator right after, which is safe because the
  // GEMM runs on the current stream, which whatever reuses the block is
  // ordered after (core/stream.h: frees are held while a second stream runs).
  Buffer device_pointers(DType::I64, Device::CUDA, Shape{static_cast<int64_t>(pointers.size())});
  DECO_CUDA_CHECK(cudaMemcpyAsync(device_pointers.tensor().raw(), pointers.data(), pointers.size() * sizeof(void*),
                                  cudaMemcpyHostToDevice, current_stream()));
  const void* const* dp = static_cast<const void* const*>(device_pointers.tensor().raw());
  DECO_CUBLAS_CHECK(cublasGemmGroupedBatchedEx(
      blas_handle(), ta.data(), tb.data(), m.data(), n.data(), k.data(), alphas.data(), dp, blas_type(first_b.dtype),
      lda.data(), dp + groups, blas_type(first_a.dtype), ldb.data(), betas.data(),
      const_cast<void* const*>(dp + 2 * groups), blas_type(first_c.dtype), ldc.data(), groups, size.data(),
      CUBLAS_COMPUTE_32F));
}

}  // namespace deco::cuda
