// CPU reference: grouped GEMM. Experts run in parallel, each one GEMM in a
// single thread (the OpenMP build of OpenBLAS runs serially inside a
// parallel region); every expert writes its own block of C, so the result
// does not depend on the schedule.
#include <vector>

#include "core/caching_allocator.h"
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

// ---------------------------------------------------------------- sparse expert products

namespace deco::ops {
namespace {

SparseExpertKernels g_sparse_expert_kernels = SparseExpertKernels::Wide;
bool wide() { return g_sparse_expert_kernels == SparseExpertKernels::Wide; }

void check_pairs(const char* op, const Tensor& rows, const Tensor& index, const Tensor& offsets) {
  DECO_REQUIRE_CPU(offsets);
  const int64_t experts = offsets.numel() - 1;
  DECO_ASSERT(experts >= 0 && offsets.data<int32_t>()[0] == 0 && offsets.data<int32_t>()[experts] == rows.size(0) &&
                  index.numel() >= rows.size(0),
              op, ": ", rows.size(0), " pair rows, offsets ending at ", offsets.data<int32_t>()[experts], ", ",
              index.numel(), " indices");
}

// A [P, H] workspace for the composition (gathered rows, or per-pair rows).
Buffer pair_rows(const Tensor& like, int64_t pairs, int64_t cols) {
  MemoryCategoryScope scope(MemoryCategory::Workspace);
  return Buffer(like.dtype(), like.device(), Shape{pairs, cols});
}

}  // namespace

void set_sparse_expert_kernels(SparseExpertKernels choice) { g_sparse_expert_kernels = choice; }
SparseExpertKernels sparse_expert_kernels() { return g_sparse_expert_kernels; }

bool gpu_sparse_experts_on_own_kernels(DType dtype, int64_t block, int64_t hidden, int64_t experts) {
#ifdef DECO_WITH_CUDA
  return sparse_expert_kernels() != SparseExpertKernels::Composition && dtype == DType::BF16 &&
         cuda::sparse_expert_kernels_support(block, hidden, experts);
#else
  (void)dtype;
  (void)block;
  (void)hidden;
  (void)experts;
  return false;
#endif
}
const char* sparse_expert_kernels_name(SparseExpertKernels choice) {
  switch (choice) {
    case SparseExpertKernels::Wide: return "wide";
    case SparseExpertKernels::Narrow: return "narrow";
    case SparseExpertKernels::Composition: return "composition";
  }
  return "?";
}

void expert_gather_gemm(const Tensor& c, const Tensor& x, const Tensor& index, const Tensor& w, GroupSplit split,
                        const Tensor& offsets, int64_t block) {
  check_pairs("expert_gather_gemm", c, index, offsets);
  DECO_ASSERT(split != GroupSplit::Rows && c.size(1) == block, "expert_gather_gemm: an expert weight and [P, D] output");
  const int64_t P = c.size(0), H = x.size(1);
  if (P == 0) return;
#ifdef DECO_WITH_CUDA
  if (c.device() == Device::CUDA && sparse_expert_kernels() != SparseExpertKernels::Composition &&
      cuda::sparse_expert_kernels_apply(block, H, offsets.numel() - 1, {&c, &x, &w})) {
    cuda::expert_gather_gemm(c, x, index, w, split == GroupSplit::ExpertRows, offsets.data<int32_t>(),
                             offsets.numel() - 1, wide());
    return;
  }
#endif
  Buffer xg = pair_rows(x, P, H);
  gather_rows(xg, x, index.slice(0, P));
  grouped_gemm({c.matrix(), GroupSplit::Rows}, {xg.tensor().matrix(), GroupSplit::Rows}, false, {w.matrix(), split},
               split == GroupSplit::ExpertRows, 1.0, 0.0, offsets, block);
}

void expert_scatter_gemm(const Tensor& y, const Tensor& g, const Tensor& index, const Tensor& w, GroupSplit split,
                         const Tensor& offsets, int64_t block) {
  check_pairs("expert_scatter_gemm", g, index, offsets);
  DECO_ASSERT(split != GroupSplit::Rows && g.size(1) == block, "expert_scatter_gemm: an expert weight and [P, D] rows");
  const int64_t P = g.size(0), H = y.size(1);
  if (P == 0) return;  // no pair: nothing added
#ifdef DECO_WITH_CUDA
  if (y.device() == Device::CUDA && sparse_expert_kernels() != SparseExpertKernels::Composition &&
      cuda::sparse_expert_kernels_apply(block, H, offsets.numel() - 1, {&y, &g, &w})) {
    cuda::expert_scatter_gemm(y, g, index, w, split == GroupSplit::ExpertRows, offsets.data<int32_t>(),
                              offsets.numel() - 1, wide());
    return;
  }
#endif
  Buffer yg = pair_rows(y, P, H);
  grouped_gemm({yg.tensor().matrix(), GroupSplit::Rows}, {g.matrix(), GroupSplit::Rows}, false, {w.matrix(), split},
               split == GroupSplit::ExpertCols, 1.0, 0.0, offsets, block);
  scatter_add_rows(y, yg, index.slice(0, P));
}

void expert_weight_grad(const Tensor& dw, GroupSplit split, const Tensor& g, const Tensor& x, const Tensor& index,
                        const Tensor& offsets, int64_t block) {
  check_pairs("expert_weight_grad", g, index, offsets);
  DECO_ASSERT(split != GroupSplit::Rows && g.size(1) == block, "expert_weight_grad: an expert weight and [P, D] rows");
  const int64_t P = g.size(0), H = x.size(1);
  if (P == 0) return;  // no pair: nothing added
#ifdef DECO_WITH_CUDA
  if (dw.device() == Device::CUDA && dw.dtype() == DType::F32 &&
      sparse_expert_kernels() != SparseExpertKernels::Composition &&
      cuda::sparse_expert_kernels_apply(block, H, offsets.numel() - 1, {&g, &x})) {
    cuda::expert_weight_grad(dw, split == GroupSplit::ExpertRows, g, x, index, offsets.data<int32_t>(),
                             offsets.numel() - 1, wide());
    return;
  }
#endif
  Buffer xg = pair_rows(x, P, H);
  gather_rows(xg, x, index.slice(0, P));
  const Grouped rows_g{g.matrix(), GroupSplit::Rows}, rows_x{xg.tensor().matrix(), GroupSplit::Rows};
  if (split == GroupSplit::ExpertRows)  // dW_e [D, H] += g_e^T x_e
    grouped_gemm({dw.matrix(), split}, rows_g, true, rows_x, false, 1.0, 1.0, offsets, block);
  else  // dW_e [H, D] += x_e^T g_e
    grouped_gemm({dw.matrix(), split}, rows_x, true, rows_g, false, 1.0, 1.0, offsets, block);
}

}  // namespace deco::ops
