// GEMMs on the GPU through cuBLASLt: float32 and bfloat16 operands with
// float32 accumulation (bf16 x bf16 -> bf16 or fp32 output), one handle, a
// 32 MiB workspace per stream from the caching allocator, and the algorithm cuBLASLt's
// heuristic picks for a shape cached, so each distinct GEMM of a training
// step asks once. float64 (the finite-difference tests' dtype) stays on
// cublasDgemm in basic.cu.
#include <cstring>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include <cublasLt.h>

#include "core/caching_allocator.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/cuda_ops.h"

namespace deco::cuda {
namespace {

constexpr size_t kWorkspaceBytes = 32u << 20;  // what cuBLASLt's Hopper kernels ask for at most

cudaDataType_t lt_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    default: fail("cuBLASLt GEMMs take float32 or bfloat16 matrices, not ", dtype_name(dtype), ".");
  }
}

// The largest power of two (up to 256) dividing the address: what the
// heuristic may assume about a column block of a wider matrix.
uint32_t alignment(const void* ptr) {
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  uint32_t a = 256;
  while (a > 1 && p % a != 0) a /= 2;
  return a;
}

struct Key {
  int64_t m, n, k, lda, ldb, ldc;
  uint8_t ta, tb, dtype_a, dtype_b, dtype_c;
  uint32_t align_a, align_b, align_c;
  // Field by field: the struct has padding, which memcmp would compare too.
  auto fields() const {
    return std::tie(m, n, k, lda, ldb, ldc, ta, tb, dtype_a, dtype_b, dtype_c, align_a, align_b, align_c);
  }
  bool operator==(const Key& o) const { return fields() == o.fields(); }
};

struct KeyHash {
  size_t operator()(const Key& key) const {
    size_t h = 1469598103934665603ull;  // FNV-1a over the fields' values
    const uint64_t values[] = {static_cast<uint64_t>(key.m), static_cast<uint64_t>(key.n), static_cast<uint64_t>(key.k),
                               static_cast<uint64_t>(key.lda), static_cast<uint64_t>(key.ldb),
                               static_cast<uint64_t>(key.ldc), key.ta, key.tb, key.dtype_a, key.dtype_b, key.dtype_c,
                               key.align_a, key.align_b, key.align_c};
    for (uint64_t v : values) h = (h ^ v) * 1099511628211ull;
    return h;
  }
};

// Descriptors and the chosen algorithm of one GEMM shape.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
  // cuBLASLt's heuristic offered no algorithm (it can happen for GEMV-like
  // shapes in bf16): cublasGemmEx runs this GEMM instead, same types, float32 compute.
  bool gemm_ex = false;
};

class Lt {
 public:
  static Lt& get() {
    static Lt* lt = new Lt;  // process lifetime (see cuda_caching_allocator)
    return *lt;
  }

  const Plan& plan(const Key& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    // Shapes that change every micro-batch (expert parallelism's received
    // rows; the composition's per-expert pair counts) would grow the cache
    // without end: past kMaxPlans it starts again (descriptors are host
    // objects, free to destroy once the GEMMs using them are launched, and
    // a caller holds its plan only until it has launched, on this thread).
    if (plans_.size() >= kMaxPlans) drop_plans();
    Plan p;
    DECO_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = key.ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = key.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    DECO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    DECO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    // Column-major layouts of the stored (untransposed) operands.
    const int64_t a_rows = key.ta ? key.k : key.m, a_cols = key.ta ? key.m : key.k;
    const int64_t b_rows = key.tb ? key.n : key.k, b_cols = key.tb ? key.k : key.n;
    DECO_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, lt_type(DType(key.dtype_a)), a_rows, a_cols, key.lda));
    DECO_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, lt_type(DType(key.dtype_b)), b_rows, b_cols, key.ldb));
    DECO_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, lt_type(DType(key.dtype_c)), key.m, key.n, key.ldc));

    cublasLtMatmulPreference_t pref = nullptr;
    DECO_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = kWorkspaceBytes;
    DECO_CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    const uint32_t aligns[] = {key.align_a, key.align_b, key.align_c, key.align_c};
    const cublasLtMatmulPreferenceAttributes_t align_attrs[] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; ++i)
      DECO_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, align_attrs[i], &aligns[i], sizeof(uint32_t)));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    // No algorithm can come back as found == 0, as a result whose state is
    // not success, or as CUBLAS_STATUS_NOT_SUPPORTED from the call itself.
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (status != CUBLAS_STATUS_NOT_SUPPORTED) DECO_CUBLAS_CHECK(status);
    if (status == CUBLAS_STATUS_NOT_SUPPORTED || result.state != CUBLAS_STATUS_SUCCESS) found = 0;
    if (found == 0) {
      if (key.dtype_a != key.dtype_b)
        fail("cuBLASLt has no algorithm for a ", key.m, "x", key.n, "x", key.k, " GEMM of ",
             dtype_name(DType(key.dtype_a)), " x ", dtype_name(DType(key.dtype_b)), " -> ",
             dtype_name(DType(key.dtype_c)), " with leading dimensions ", key.lda, ", ", key.ldb, ", ", key.ldc,
             "; this is a bug in deco's choice of layouts, please report it.");
      p.gemm_ex = true;
    } else {
      p.algo = result.algo;
      p.workspace = result.workspaceSize;
    }
    return plans_.emplace(key, p).first->second;
  }

  cublasLtHandle_t handle() const { return handle_; }
  // A workspace per stream: two GEMMs running side by side must not share one.
  void* workspace(cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [s, w] : workspaces_)
      if (s == stream) return w;
    void* w = cuda_caching_allocator()->allocate(kWorkspaceBytes, MemoryCategory::Workspace);
    workspaces_.emplace_back(stream, w);
    return w;
  }
  size_t cached_plans() {
    std::lock_guard<std::mutex> lock(mutex_);
    return plans_.size();
  }

 private:
  Lt() {
    DECO_CUBLAS_CHECK(cublasLtCreate(&handle_));
    workspace(nullptr);  // the legacy stream's, allocated up front like the model's buffers
  }
  static constexpr size_t kMaxPlans = 4096;
  void drop_plans() {
    for (auto& [key, p] : plans_) {
      cublasLtMatrixLayoutDestroy(p.a);
      cublasLtMatrixLayoutDestroy(p.b);
      cublasLtMatrixLayoutDestroy(p.c);
      cublasLtMatmulDescDestroy(p.desc);
    }
    plans_.clear();
  }
  cublasLtHandle_t handle_ = nullptr;
  std::vector<std::pair<cudaStream_t, void*>> workspaces_;  // few: the legacy stream and a side stream
  std::mutex mutex_;
  std::unordered_map<Key, Plan, KeyHash> plans_;
};

__global__ void scale_matrix_kernel(float* c, int64_t rows, int64_t cols, int64_t ld, float beta) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < rows * cols) {
    float& x = c[(i / cols) * ld + i % cols];
    x = beta == 0.0f ? 0.0f : beta * x;
  }
}

}  // namespace

void gemm_lt(const Matrix& C, const Matrix& A, bool trans_a, const Matrix& B, bool trans_b, float alpha,
             float beta) {
  const cudaStream_t stream = current_stream();
  const int64_t m = C.rows, n = C.cols, k = trans_a ? A.rows : A.cols;
  if (m == 0 || n == 0) return;
  if (k == 0) {  // C = beta C exactly (cuBLASLt refuses k = 0)
    DECO_ASSERT(C.dtype == DType::F32, "k = 0 GEMM into ", dtype_name(C.dtype));
    const int64_t total = m * n;
    scale_matrix_kernel<<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(
        static_cast<float*>(C.ptr), m, n, C.ld, beta);
    DECO_CUDA_CHECK(cudaGetLastError());
    return;
  }
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLASLt's
  // first operand is B's memory, its second A's, and its m x n is our n x m.
  Key key{};
  key.m = n;
  key.n = m;
  key.k = k;
  key.lda = B.ld;
  key.ldb = A.ld;
  key.ldc = C.ld;
  key.ta = trans_b;
  key.tb = trans_a;
  key.dtype_a = static_cast<uint8_t>(B.dtype);
  key.dtype_b = static_cast<uint8_t>(A.dtype);
  key.dtype_c = static_cast<uint8_t>(C.dtype);
  key.align_a = alignment(B.ptr);
  key.align_b = alignment(A.ptr);
  key.align_c = alignment(C.ptr);
  Lt& lt = Lt::get();
  const Plan& p = lt.plan(key);
  if (p.gemm_ex) {
    cublasHandle_t h = blas_handle();  // bound to the current stream
    DECO_CUBLAS_CHECK(cublasGemmEx(h, key.ta ? CUBLAS_OP_T : CUBLAS_OP_N, key.tb ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k,
                                   &alpha, B.ptr, lt_type(B.dtype), B.ld, A.ptr, lt_type(A.dtype), A.ld, &beta, C.ptr,
                                   lt_type(C.dtype), C.ld, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return;
  }
  DECO_CUBLAS_CHECK(cublasLtMatmul(lt.handle(), p.desc, &alpha, B.ptr, p.a, A.ptr, p.b, &beta, C.ptr, p.c, C.ptr,
                                     p.c, &p.algo, lt.workspace(stream), kWorkspaceBytes, stream));
}

size_t gemm_lt_cached_plans() { return Lt::get().cached_plans(); }

void reserve_gemm_workspace() { Lt::get().workspace(current_stream()); }

}  // namespace deco::cuda
