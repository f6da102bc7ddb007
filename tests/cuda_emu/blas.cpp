// The cuBLAS and cuBLASLt calls deco makes (kernels/cuda/gemm_lt.cu,
// grouped_gemm.cu, basic.cu), done on the host for the CUDA emulator:
// column-major GEMMs over float32, bfloat16 and float64 operands on the host
// BLAS, rounded once to the output type. The descriptors are the
// libraries' opaque structs, holding what the GEMM needs; the heuristic
// always offers one algorithm. Alignments and workspace sizes are accepted
// and not modelled.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

struct Layout {
  cudaDataType type;
  uint64_t rows, cols;
  int64_t ld;
};
struct Desc {
  cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
};
static_assert(sizeof(Layout) <= sizeof(cublasLtMatrixLayoutOpaque_t), "layout fits the opaque struct");
static_assert(sizeof(Desc) <= sizeof(cublasLtMatmulDescOpaque_t), "descriptor fits the opaque struct");

double load(const void* p, cudaDataType type, int64_t i) {
  switch (type) {
    case CUDA_R_32F: return static_cast<const float*>(p)[i];
    case CUDA_R_64F: return static_cast<const double*>(p)[i];
    case CUDA_R_16BF: return static_cast<double>(__bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]));
    default: return 0.0;
  }
}
void store(void* p, cudaDataType type, int64_t i, double v) {
  switch (type) {
    case CUDA_R_32F: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case CUDA_R_64F: static_cast<double*>(p)[i] = v; break;
    case CUDA_R_16BF:
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(static_cast<float>(v));
      break;
    default: break;
  }
}
bool supported(cudaDataType type) { return type == CUDA_R_32F || type == CUDA_R_64F || type == CUDA_R_16BF; }

// Column-major C (m x n, ldc) = alpha op(A) op(B) + beta C, through the
// host BLAS: float64 operands in double, float32 and bfloat16 ones widened to
// float32 (exact) and summed in float32, as cuBLAS's COMPUTE_32F does. C is
// not read when beta is 0 (it may hold anything, NaN included).
template <typename W>
std::vector<W> widen(const void* p, cudaDataType type, int64_t rows, int64_t cols, int64_t ld) {
  std::vector<W> out(static_cast<size_t>(rows * cols));
  for (int64_t j = 0; j < cols; ++j)
    for (int64_t i = 0; i < rows; ++i) out[i + j * rows] = static_cast<W>(load(p, type, i + j * ld));
  return out;
}

cublasStatus_t gemm(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, double alpha,
                    const void* A, cudaDataType at, int64_t lda, const void* B, cudaDataType bt, int64_t ldb,
                    double beta, void* C, cudaDataType ct, int64_t ldc) {
  if (!supported(at) || !supported(bt) || !supported(ct)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (lda < (ta == CUBLAS_OP_N ? m : k) || ldb < (tb == CUBLAS_OP_N ? k : n) || ldc < m)
    return CUBLAS_STATUS_INVALID_VALUE;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const int64_t a_rows = ta == CUBLAS_OP_N ? m : k, a_cols = ta == CUBLAS_OP_N ? k : m;
  const int64_t b_rows = tb == CUBLAS_OP_N ? k : n, b_cols = tb == CUBLAS_OP_N ? n : k;
  const CBLAS_TRANSPOSE cta = ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans;
  const CBLAS_TRANSPOSE ctb = tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans;
  const bool f64 = at == CUDA_R_64F || bt == CUDA_R_64F || ct == CUDA_R_64F;
  auto run = [&](auto zero) {
    using W = decltype(zero);
    const std::vector<W> a = widen<W>(A, at, a_rows, a_cols, lda), b = widen<W>(B, bt, b_rows, b_cols, ldb);
    std::vector<W> c = beta == 0.0 ? std::vector<W>(static_cast<size_t>(m * n)) : widen<W>(C, ct, m, n, ldc);
    const blasint M = static_cast<blasint>(m), N = static_cast<blasint>(n), K = static_cast<blasint>(k);
    const blasint LA = static_cast<blasint>(std::max<int64_t>(a_rows, 1));
    const blasint LB = static_cast<blasint>(std::max<int64_t>(b_rows, 1));
    if (k == 0) {
      for (W& x : c) x = static_cast<W>(beta) * x;
    } else if constexpr (std::is_same_v<W, double>) {
      cblas_dgemm(CblasColMajor, cta, ctb, M, N, K, alpha, a.data(), LA, b.data(), LB, beta, c.data(), M);
    } else {
      cblas_sgemm(CblasColMajor, cta, ctb, M, N, K, static_cast<float>(alpha), a.data(), LA, b.data(), LB,
                  static_cast<float>(beta), c.data(), M);
    }
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < m; ++i) store(C, ct, i + j * ldc, static_cast<double>(c[i + j * m]));
  };
  if (f64) run(0.0);
  else run(0.0f);
  return CUBLAS_STATUS_SUCCESS;
}

// The structs live in the opaque ones' bytes, copied in and out.
template <typename T, typename O> T read(const O* opaque) {
  T v;
  std::memcpy(&v, opaque->data, sizeof(T));
  return v;
}
template <typename T, typename O> void write(O* opaque, const T& v) { std::memcpy(opaque->data, &v, sizeof(T)); }

}  // namespace

extern "C" {

// ---------------------------------------------------------------- cuBLAS
cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  *handle = reinterpret_cast<cublasHandle_t>(new int(0));
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  delete reinterpret_cast<int*>(handle);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }

const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS (emulated)";
  }
}

cublasStatus_t cublasDgemm_v2(cublasHandle_t, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                              const double* alpha, const double* A, int lda, const double* B, int ldb,
                              const double* beta, double* C, int ldc) {
  return gemm(transa, transb, m, n, k, *alpha, A, CUDA_R_64F, lda, B, CUDA_R_64F, ldb, *beta, C, CUDA_R_64F, ldc);
}

cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t) {
  if (computeType != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  return gemm(transa, transb, m, n, k, *static_cast<const float*>(alpha), A, Atype, lda, B, Btype, ldb,
              *static_cast<const float*>(beta), C, Ctype, ldc);
}

cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t, const cublasOperation_t transa_array[],
                                          const cublasOperation_t transb_array[], const int m_array[],
                                          const int n_array[], const int k_array[], const void* alpha_array,
                                          const void* const Aarray[], cudaDataType_t Atype, const int lda_array[],
                                          const void* const Barray[], cudaDataType_t Btype, const int ldb_array[],
                                          const void* beta_array, void* const Carray[], cudaDataType_t Ctype,
                                          const int ldc_array[], int group_count, const int group_size[],
                                          cublasComputeType_t computeType) {
  if (computeType != CUBLAS_COMPUTE_32F || Atype != Btype || Btype != Ctype) return CUBLAS_STATUS_NOT_SUPPORTED;
  const float* alphas = static_cast<const float*>(alpha_array);
  const float* betas = static_cast<const float*>(beta_array);
  int problem = 0;  // the pointer arrays run over every problem of every group
  for (int g = 0; g < group_count; ++g)
    for (int i = 0; i < group_size[g]; ++i, ++problem) {
      const cublasStatus_t s = gemm(transa_array[g], transb_array[g], m_array[g], n_array[g], k_array[g], alphas[g],
                                    Aarray[problem], Atype, lda_array[g], Barray[problem], Btype, ldb_array[g],
                                    betas[g], Carray[problem], Ctype, ldc_array[g]);
      if (s != CUBLAS_STATUS_SUCCESS) return s;
    }
  return CUBLAS_STATUS_SUCCESS;
}

// ---------------------------------------------------------------- cuBLASLt
cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  *handle = reinterpret_cast<cublasLtHandle_t>(new int(0));
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  delete reinterpret_cast<int*>(handle);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType) {
  if (computeType != CUBLAS_COMPUTE_32F || scaleType != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  *d = new cublasLtMatmulDescOpaque_t{};
  write(*d, Desc{});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
  delete d;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t size) {
  if (attr != CUBLASLT_MATMUL_DESC_TRANSA && attr != CUBLASLT_MATMUL_DESC_TRANSB) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (size != sizeof(cublasOperation_t)) return CUBLAS_STATUS_INVALID_VALUE;
  Desc v = read<Desc>(d);
  std::memcpy(attr == CUBLASLT_MATMUL_DESC_TRANSA ? &v.ta : &v.tb, buf, size);
  write(d, v);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
  if (!supported(type)) return CUBLAS_STATUS_NOT_SUPPORTED;
  *l = new cublasLtMatrixLayoutOpaque_t{};
  write(*l, Layout{type, rows, cols, ld});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
  delete l;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
  *p = new cublasLtMatmulPreferenceOpaque_t{};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
  delete p;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t,
                                                    const void*, size_t) {
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t,
                                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                              cublasLtMatmulPreference_t, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* returned) {
  if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
  results[0] = cublasLtMatmulHeuristicResult_t{};
  results[0].state = CUBLAS_STATUS_SUCCESS;
  results[0].workspaceSize = 0;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t computeDesc, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc,
                              const void* beta, const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t*, void*, size_t, cudaStream_t) {
  const Desc d = read<Desc>(computeDesc);
  const Layout a = read<Layout>(Adesc), b = read<Layout>(Bdesc), c = read<Layout>(Cdesc), o = read<Layout>(Ddesc);
  const int64_t m = static_cast<int64_t>(o.rows), n = static_cast<int64_t>(o.cols);
  const int64_t k = static_cast<int64_t>(d.ta == CUBLAS_OP_N ? a.cols : a.rows);
  const int64_t a_m = static_cast<int64_t>(d.ta == CUBLAS_OP_N ? a.rows : a.cols);
  const int64_t b_k = static_cast<int64_t>(d.tb == CUBLAS_OP_N ? b.rows : b.cols);
  const int64_t b_n = static_cast<int64_t>(d.tb == CUBLAS_OP_N ? b.cols : b.rows);
  if (a_m != m || b_k != k || b_n != n || c.rows != o.rows || c.cols != o.cols) return CUBLAS_STATUS_INVALID_VALUE;
  if (C != D && *static_cast<const float*>(beta) != 0.0f) {  // D = alpha AB + beta C, C apart from D
    if (c.type != o.type) return CUBLAS_STATUS_NOT_SUPPORTED;
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < m; ++i) store(D, o.type, i + j * o.ld, load(C, c.type, i + j * c.ld));
  }
  return gemm(d.ta, d.tb, m, n, k, *static_cast<const float*>(alpha), A, a.type, a.ld, B, b.type, b.ld,
              *static_cast<const float*>(beta), D, o.type, o.ld);
}

}  // extern "C"
