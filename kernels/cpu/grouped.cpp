// CPU reference: grouped GEMM. Experts run in parallel, each one GEMM in a
// single thread (the OpenMP build of OpenBLAS runs serially inside a
// parallel region); every expert writes its own block of C, so the result
// does not depend on the schedule.
#include <vector>

#include "kernels/cpu/widen.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/dispatch.h"
#include "kernels/ops.h"

namespace deco::ops {
namespace {

Matrix slice(const Grouped& g, int64_t e, const int32_t* off, int64_t block) {
  switch (g.split) {
    case GroupSplit::Rows: return g.m.row_block(off[e], off[e + 1]);
    case GroupSplit::ExpertRows: return g.m.row_block(e * block, (e + 1) * block);
    case GroupSplit::ExpertCols: return g.m.col_block(e * block, (e + 1) * block);
  }
  return g.m;
}

}  // namespace

void grouped_gemm(const Grouped& C, const Grouped& A, bool trans_a, const Grouped& B, bool trans_b,
                  double alpha, double beta, const Tensor& offsets, int64_t block) {
  DECO_REQUIRE_CPU(offsets);
  const int64_t experts = offsets.numel() - 1;
  const int32_t* off = offsets.data<int32_t>();
  // Shapes are checked here, outside the parallel loop: an exception thrown
  // inside an OpenMP region would terminate the process.
  for (int64_t e = 0; e < experts; ++e) {
    const Matrix c = slice(C, e, off, block), a = slice(A, e, off, block), b = slice(B, e, off, block);
    DECO_ASSERT(c.rows == (trans_a ? a.cols : a.rows) && c.cols == (trans_b ? b.rows : b.cols) &&
                    (trans_a ? a.rows : a.cols) == (trans_b ? b.cols : b.rows),
                "grouped_gemm shapes of expert ", e);
  }
  if (C.m.device == Device::CPU && cpu::any_bf16({&C.m, &A.m, &B.m})) {
    cpu::Widen w;
    grouped_gemm({w.out(C.m, beta != 0.0), C.split}, {w.in(A.m), A.split}, trans_a, {w.in(B.m), B.split}, trans_b,
                 alpha, beta, offsets, block);
    return;
  }
  if (C.m.device == Device::CUDA) {
#ifdef DECO_WITH_CUDA
    if (C.m.dtype != DType::F64) {  // one grouped cuBLAS call over the experts with pairs
      std::vector<cuda::GroupedProblem> problems;
      for (int64_t e = 0; e < experts; ++e)
        if (off[e] != off[e + 1]) problems.push_back({slice(C, e, off, block), slice(A, e, off, block), slice(B, e, off, block)});
      cuda::grouped_gemm_batched(problems, trans_a, trans_b, static_cast<float>(alpha), static_cast<float>(beta));
      return;
    }
#endif
    // float64 (the tests' dtype): a GEMM per expert with pairs, in order on the stream.
    for (int64_t e = 0; e < experts; ++e)
      if (off[e] != off[e + 1])
        gemm(slice(C, e, off, block), slice(A, e, off, block), trans_a, slice(B, e, off, block), trans_b, alpha,
             beta);
    return;
  }
#pragma omp parallel for schedule(dynamic)
  for (int64_t e = 0; e < experts; ++e) {
    if (off[e] == off[e + 1]) continue;
    gemm(slice(C, e, off, block), slice(A, e, off, block), trans_a, slice(B, e, off, block), trans_b,
         alpha, beta);
  }
}

}  // namespace deco::ops
