// CUDA: axpy, GEMM (float64 through cuBLAS here; float32 and bfloat16 in
// gemm_lt.cu), embedding, and the elementwise, row, column, reduction,
// conversion and gather/scatter ops of kernels/cpu/basic.cpp.
#include <cuda_bf16.h>

#include <algorithm>
#include <utility>
#include <vector>
#include <cub/cub.cuh>

#include "kernels/cuda/check.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/storage.cuh"
#include "kernels/dispatch.h"

namespace deco::cuda {

cublasHandle_t blas_handle() {
  // Few entries: the legacy stream and a side stream or two.
  thread_local std::vector<std::pair<cudaStream_t, cublasHandle_t>> handles;
  const cudaStream_t stream = current_stream();
  for (const auto& [s, h] : handles)
    if (s == stream) return h;
  cublasHandle_t h = nullptr;
  DECO_CUBLAS_CHECK(cublasCreate(&h));
  DECO_CUBLAS_CHECK(cublasSetStream(h, stream));
  handles.emplace_back(stream, h);
  return h;
}

namespace {

// y (T) += alpha * x, x in T or in acc_t<T> (a float32 gradient added into a bf16 one).
template <typename T, typename X> __global__ void axpy_kernel(T* y, const X* x, acc_t<T> alpha, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = st<T>(ld(y[i]) + alpha * static_cast<acc_t<T>>(ld(x[i])));
}

template <typename T>
__global__ void embedding_forward_kernel(T* out, const int32_t* tokens, const T* table, int64_t n,
                                         int64_t hidden) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n * hidden) out[i] = table[tokens[i / hidden] * hidden + i % hidden];
}

unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace

void axpy(const Tensor& y, const Tensor& x, double alpha) {
  const int64_t n = y.numel();
  if (n == 0) return;
  dispatch_with_acc(y.dtype(), x.dtype(), "axpy", [&](auto T_tag, auto X_tag) {
    using T = decltype(T_tag);
    using X = decltype(X_tag);
    axpy_kernel<T, X><<<blocks_for(n, 256), 256, 0, current_stream()>>>(ptr<T>(y), ptr<X>(x), static_cast<acc_t<T>>(alpha), n);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void gemm(const Matrix& C, const Matrix& A, bool trans_a, const Matrix& B, bool trans_b,
          double alpha, double beta) {
  if (C.dtype != DType::F64) {  // float32 and bfloat16: cuBLASLt (gemm_lt.cu)
    gemm_lt(C, A, trans_a, B, trans_b, static_cast<float>(alpha), static_cast<float>(beta));
    return;
  }
  // cuBLAS is column-major: the row-major C = op(A) op(B) is the
  // column-major C^T = op(B)^T op(A)^T, so B and A swap places.
  const int m = static_cast<int>(C.rows), n = static_cast<int>(C.cols);
  const int k = static_cast<int>(trans_a ? A.rows : A.cols);
  if (k == 0) fail("a float64 GEMM with k = 0 on the GPU is not supported; the GPU path runs float32 or bfloat16.");
  const cublasOperation_t ob = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t oa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  DECO_CUBLAS_CHECK(cublasDgemm(blas_handle(), ob, oa, n, m, k, &alpha, B.data<double>(), static_cast<int>(B.ld),
                                A.data<double>(), static_cast<int>(A.ld), &beta, C.data<double>(),
                                static_cast<int>(C.ld)));
}

void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& table) {
  const int64_t n = tokens.numel(), hidden = table.size(1);
  if (n == 0) return;
  dispatch_activation(out.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    embedding_forward_kernel<T><<<blocks_for(n * hidden, 256), 256, 0, current_stream()>>>(
        ptr<T>(out), tokens.data<int32_t>(), ptr<T>(table), n, hidden);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

}  // namespace deco::cuda

// ==================================================================== elementwise, rows, columns,
// reductions, conversions, gather/scatter: the CPU reference's semantics
// (kernels/cpu/basic.cpp), float32 and float64, and bfloat16 storage with
// the arithmetic in float32 (kernels/cuda/storage.cuh).
namespace deco::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T> __global__ void scale_kernel(T* x, acc_t<T> alpha, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) x[i] = st<T>(ld(x[i]) * alpha);
}

template <typename T> __global__ void mul_kernel(T* out, const T* a, const T* b, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = st<T>(ld(a[i]) * ld(b[i]));
}

// out[r, c] = x[r, c] * s[r]  (mode 0), x[r, c] - s[r] (mode 1); out may
// alias x; s in T or acc_t<T> (the experts' float32 scores).
template <typename T, typename S, int Mode>
__global__ void row_scalar_kernel(T* out, const T* x, const S* s, int64_t rows, int64_t cols) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * cols) return;
  const acc_t<T> v = static_cast<acc_t<T>>(ld(s[i / cols]));
  out[i] = st<T>(Mode == 0 ? ld(x[i]) * v : ld(x[i]) - v);
}

template <typename T>
__global__ void add_to_rows_kernel(T* m, const T* v, acc_t<T> alpha, int64_t rows, int64_t cols) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < rows * cols) m[i] = st<T>(ld(m[i]) + alpha * ld(v[i % cols]));
}

// One warp per row: out[r] = mean (in double, as the CPU) or the dot product
// of a and b (in T, as the CPU) over the row.
template <typename T>
__global__ void row_mean_kernel(T* out, const T* x, int64_t rows, int64_t cols) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  double acc = 0.0;
  for (int64_t c = lane; c < cols; c += 32) acc += static_cast<double>(ld(x[r * cols + c]));
  acc = warp_sum(acc);
  if (lane == 0) out[r] = st<T>(static_cast<acc_t<T>>(acc / static_cast<double>(cols)));
}

// out in T or acc_t<T> (the experts' float32 score gradients under bf16).
template <typename T, typename O>
__global__ void row_dot_kernel(O* out, const T* a, const T* b, int64_t rows, int64_t cols) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  acc_t<T> acc = 0;
  for (int64_t c = lane; c < cols; c += 32) acc += ld(a[r * cols + c]) * ld(b[r * cols + c]);
  acc = warp_sum(acc);
  if (lane == 0) out[r] = st<O>(static_cast<acc_t<O>>(acc));
}

// Column means in double, in two passes over a partition that depends on
// the row count only (deterministic): partial[slab, c] sums a slab of rows
// of column c, then one thread per column adds the slabs in order. One pass
// of a thread per column would run on cols / 256 blocks (7 SMs for w_bar at
// deco-1.2b's 6528 x 1792), each thread walking every row.
constexpr int64_t kColSlabRows = 64, kColMaxSlabs = 256;

template <typename T>
__global__ void col_sum_partial_kernel(double* partial, const T* x, int64_t rows, int64_t cols, int64_t slab_rows) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  const int64_t begin = blockIdx.y * slab_rows, end = begin + slab_rows < rows ? begin + slab_rows : rows;
  double acc = 0.0;
  for (int64_t r = begin; r < end; ++r) acc += static_cast<double>(ld(x[r * cols + c]));
  partial[blockIdx.y * cols + c] = acc;
}

template <typename T>
__global__ void col_mean_finish_kernel(T* out, const double* partial, int64_t slabs, int64_t rows, int64_t cols) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  double acc = 0.0;
  for (int64_t s = 0; s < slabs; ++s) acc += partial[s * cols + c];
  out[c] = st<T>(static_cast<acc_t<T>>(acc / static_cast<double>(rows)));
}

// Sum of squares in double, in two passes with a fixed partition (a fixed
// number of blocks, each striding the same elements; then one block over the
// partials): the same bits for the same input every time.
constexpr int kSumBlocks = 512;

template <typename T> __global__ void sum_squares_partial_kernel(double* partial, const T* x, int64_t n) {
  __shared__ double scratch[kThreads];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    acc += static_cast<double>(ld(x[i])) * static_cast<double>(ld(x[i]));
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_partials_kernel(double* total, const double* partial, int n) {
  __shared__ double scratch[kSumBlocks];
  const double sum = block_sum(threadIdx.x < n ? partial[threadIdx.x] : 0.0, scratch);
  if (threadIdx.x == 0) *total = sum;
}

template <typename TD, typename TS> __device__ TD convert_value(TS v) { return static_cast<TD>(v); }
template <> __device__ __nv_bfloat16 convert_value<__nv_bfloat16, float>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __nv_bfloat16 convert_value<__nv_bfloat16, double>(double v) {
  return __float2bfloat16_rn(static_cast<float>(v));
}
template <> __device__ float convert_value<float, __nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ double convert_value<double, __nv_bfloat16>(__nv_bfloat16 v) {
  return static_cast<double>(__bfloat162float(v));
}

template <typename TD, typename TS> __global__ void convert_kernel(TD* dst, const TS* src, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) dst[i] = convert_value<TD>(src[i]);
}

// Calls f(T{}) for float32, float64 and bfloat16 storage.
template <typename F> void dispatch_storage(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32: f(float{}); break;
    case DType::F64: f(double{}); break;
    case DType::BF16: f(__nv_bfloat16{}); break;
    default: fail("no conversion for ", dtype_name(dtype), " on the GPU; convert between float32, float64 and bfloat16.");
  }
}

template <typename T>
__global__ void gather_rows_kernel(T* out, const T* x, const int32_t* index, int64_t rows, int64_t cols) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < rows * cols) out[i] = x[static_cast<int64_t>(index[i / cols]) * cols + i % cols];
}

__global__ void iota_kernel(int32_t* v, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) v[i] = static_cast<int32_t>(i);
}

// One block per run of equal destinations: y[dest, :] += src[p, :] for the
// run's source rows p in increasing order (the radix sort is stable), the
// order the CPU adds them in, so the result is the CPU's bit for bit.
// y in T (or acc_t<T>: the embedding's float32 gradient from bf16 rows);
// the sum in float32 for bfloat16, y rounded once.
template <typename Y, typename T>
__global__ void scatter_runs_kernel(Y* y, const T* src, const int32_t* run_dest, const int32_t* run_length,
                                    const int32_t* run_start, const int32_t* sorted_rows, const int32_t* num_runs,
                                    int64_t cols) {
  if (static_cast<int>(blockIdx.x) >= *num_runs) return;
  const int64_t dest = run_dest[blockIdx.x];
  const int32_t begin = run_start[blockIdx.x], end = begin + run_length[blockIdx.x];
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    acc_t<Y> acc = ld(y[dest * cols + c]);
    for (int32_t j = begin; j < end; ++j)
      acc += static_cast<acc_t<Y>>(ld(src[static_cast<int64_t>(sorted_rows[j]) * cols + c]));
    y[dest * cols + c] = st<Y>(acc);
  }
}

// Device scratch for one call, from the caching allocator (no cudaMalloc after warm-up).
struct Scratch {
  explicit Scratch(size_t bytes) : buffer(DType::I32, Device::CUDA, Shape{static_cast<int64_t>((bytes + 3) / 4 + 1)}) {}
  void* ptr() const { return buffer.tensor().raw(); }
  Buffer buffer;
};

}  // namespace

void zero(const Tensor& x) {
  if (x.numel() > 0) DECO_CUDA_CHECK(cudaMemsetAsync(x.raw(), 0, x.nbytes(), current_stream()));
}

void scale(const Tensor& x, double alpha) {
  const int64_t n = x.numel();
  if (n == 0) return;
  dispatch_activation(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    scale_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, current_stream()>>>(ptr<T>(x), static_cast<acc_t<T>>(alpha), n);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

double sum_squares(const Tensor& x) {
  const int64_t n = x.numel();
  if (n == 0) return 0.0;
  Buffer partial(DType::F64, Device::CUDA, Shape{kSumBlocks + 1});
  double* p = partial.data<double>();
  dispatch_activation(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    sum_squares_partial_kernel<T><<<kSumBlocks, kThreads, 0, current_stream()>>>(p, ptr<T>(x), n);
  });
  sum_partials_kernel<<<1, kSumBlocks, 0, current_stream()>>>(p + kSumBlocks, p, kSumBlocks);
  DECO_CUDA_CHECK(cudaGetLastError());
  double total = 0.0;
  device_copy(Device::CPU, &total, Device::CUDA, p + kSumBlocks, sizeof(double));
  return total;
}

void row_mean(const Tensor& out, const Tensor& x) {
  const Matrix m = x.matrix();
  if (m.rows == 0) return;
  dispatch_activation(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    row_mean_kernel<T><<<blocks_for(m.rows * 32, kThreads), kThreads, 0, current_stream()>>>(ptr<T>(out), ptr<T>(x), m.rows, m.cols);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void col_mean(const Tensor& out, const Tensor& x) {
  const Matrix m = x.matrix();
  if (m.cols == 0) return;
  dispatch_activation(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t slabs = std::max<int64_t>(1, std::min(kColMaxSlabs, (m.rows + kColSlabRows - 1) / kColSlabRows));
    const int64_t slab_rows = (m.rows + slabs - 1) / slabs;
    Buffer partial(DType::F64, Device::CUDA, Shape{slabs, m.cols});  // from the caching allocator, on this stream
    col_sum_partial_kernel<T><<<dim3(blocks_for(m.cols, kThreads), static_cast<unsigned>(slabs)), kThreads, 0,
                                current_stream()>>>(partial.data<double>(), ptr<T>(x), m.rows, m.cols, slab_rows);
    col_mean_finish_kernel<T><<<blocks_for(m.cols, kThreads), kThreads, 0, current_stream()>>>(
        ptr<T>(out), partial.data<double>(), slabs, m.rows, m.cols);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void row_dot(const Tensor& out, const Tensor& a, const Tensor& b) {
  const Matrix m = a.matrix();
  if (m.rows == 0) return;
  dispatch_with_acc(a.dtype(), out.dtype(), "row_dot", [&](auto tag, auto out_tag) {
    using T = decltype(tag);
    using O = decltype(out_tag);
    row_dot_kernel<T, O><<<blocks_for(m.rows * 32, kThreads), kThreads, 0, current_stream()>>>(ptr<O>(out), ptr<T>(a), ptr<T>(b), m.rows,
                                                                            m.cols);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void scale_rows(const Tensor& out, const Tensor& x, const Tensor& s) {
  const Matrix m = x.matrix();
  if (m.rows * m.cols == 0) return;
  dispatch_with_acc(x.dtype(), s.dtype(), "scale_rows", [&](auto tag, auto s_tag) {
    using T = decltype(tag);
    using S = decltype(s_tag);
    row_scalar_kernel<T, S, 0><<<blocks_for(m.rows * m.cols, kThreads), kThreads, 0, current_stream()>>>(ptr<T>(out), ptr<T>(x), ptr<S>(s),
                                                                                    m.rows, m.cols);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void sub_row_scalar(const Tensor& y, const Tensor& x, const Tensor& s) {
  const Matrix m = x.matrix();
  if (m.rows * m.cols == 0) return;
  dispatch_with_acc(x.dtype(), s.dtype(), "sub_row_scalar", [&](auto tag, auto s_tag) {
    using T = decltype(tag);
    using S = decltype(s_tag);
    row_scalar_kernel<T, S, 1><<<blocks_for(m.rows * m.cols, kThreads), kThreads, 0, current_stream()>>>(ptr<T>(y), ptr<T>(x), ptr<S>(s),
                                                                                    m.rows, m.cols);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void add_to_rows(const Tensor& m, const Tensor& v, double alpha) {
  const Matrix mm = m.matrix();
  if (mm.rows * mm.cols == 0) return;
  dispatch_activation(m.dtype(), [&](auto tag) {
    using T = decltype(tag);
    add_to_rows_kernel<T><<<blocks_for(mm.rows * mm.cols, kThreads), kThreads, 0, current_stream()>>>(
        ptr<T>(m), ptr<T>(v), static_cast<acc_t<T>>(alpha), mm.rows, mm.cols);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void mul(const Tensor& out, const Tensor& a, const Tensor& b) {
  const int64_t n = a.numel();
  if (n == 0) return;
  dispatch_activation(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    mul_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, current_stream()>>>(ptr<T>(out), ptr<T>(a), ptr<T>(b), n);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void convert(const Tensor& dst, const Tensor& src) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  dispatch_storage(dst.dtype(), [&](auto dst_tag) {
    dispatch_storage(src.dtype(), [&](auto src_tag) {
      using TD = decltype(dst_tag);
      using TS = decltype(src_tag);
      convert_kernel<TD, TS><<<blocks_for(n, kThreads), kThreads, 0, current_stream()>>>(static_cast<TD*>(dst.raw()),
                                                                    static_cast<const TS*>(src.raw()), n);
    });
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void gather_rows(const Tensor& out, const Tensor& x, const Tensor& index) {
  const Matrix mo = out.matrix();
  if (mo.rows * mo.cols == 0) return;
  dispatch_activation(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    gather_rows_kernel<T><<<blocks_for(mo.rows * mo.cols, kThreads), kThreads, 0, current_stream()>>>(
        ptr<T>(out), ptr<T>(x), index.data<int32_t>(), mo.rows, mo.cols);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void scatter_add_rows(const Tensor& y, const Tensor& src, const Tensor& index) {
  const Matrix my = y.matrix(), ms = src.matrix();
  const int64_t P = ms.rows;
  if (P == 0 || my.cols == 0) return;
  DECO_ASSERT(P < (int64_t{1} << 31) && my.rows < (int64_t{1} << 31), "scatter_add_rows: too many rows for int32");
  // Group the source rows by destination, keeping their order (CUB's radix
  // sort is stable), then one block per destination adds its rows in order.
  const int n = static_cast<int>(P);
  Buffer rows_in(DType::I32, Device::CUDA, Shape{P}), rows_sorted(DType::I32, Device::CUDA, Shape{P}),
      keys_sorted(DType::I32, Device::CUDA, Shape{P}), run_dest(DType::I32, Device::CUDA, Shape{P}),
      run_length(DType::I32, Device::CUDA, Shape{P}), run_start(DType::I32, Device::CUDA, Shape{P}),
      num_runs(DType::I32, Device::CUDA, Shape{1});
  iota_kernel<<<blocks_for(P, kThreads), kThreads, 0, current_stream()>>>(rows_in.data<int32_t>(), P);
  DECO_CUDA_CHECK(cudaGetLastError());
  int end_bit = 1;
  while (end_bit < 31 && (int64_t{1} << end_bit) < my.rows) ++end_bit;  // sort only the bits row ids use
  size_t sort_bytes = 0, rle_bytes = 0, scan_bytes = 0;
  DECO_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, index.data<int32_t>(), keys_sorted.data<int32_t>(),
                                                  rows_in.data<int32_t>(), rows_sorted.data<int32_t>(), n, 0, end_bit,
                                                  current_stream()));
  DECO_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(nullptr, rle_bytes, keys_sorted.data<int32_t>(),
                                                     run_dest.data<int32_t>(), run_length.data<int32_t>(),
                                                     num_runs.data<int32_t>(), n, current_stream()));
  DECO_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, run_length.data<int32_t>(),
                                                run_start.data<int32_t>(), n, current_stream()));
  Scratch scratch(std::max({sort_bytes, rle_bytes, scan_bytes}));
  DECO_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(scratch.ptr(), sort_bytes, index.data<int32_t>(),
                                                  keys_sorted.data<int32_t>(), rows_in.data<int32_t>(),
                                                  rows_sorted.data<int32_t>(), n, 0, end_bit, current_stream()));
  DECO_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(scratch.ptr(), rle_bytes, keys_sorted.data<int32_t>(),
                                                     run_dest.data<int32_t>(), run_length.data<int32_t>(),
                                                     num_runs.data<int32_t>(), n, current_stream()));
  // Lengths past the number of runs stay 0 (fresh buffers are zeroed), and
  // blocks beyond num_runs return at once.
  DECO_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(scratch.ptr(), scan_bytes, run_length.data<int32_t>(),
                                                run_start.data<int32_t>(), n, current_stream()));
  dispatch_with_acc(src.dtype(), y.dtype(), "scatter_add_rows", [&](auto tag, auto y_tag) {
    using T = decltype(tag);
    using Y = decltype(y_tag);
    scatter_runs_kernel<Y, T><<<static_cast<unsigned>(P), 128, 0, current_stream()>>>(
        ptr<Y>(y), ptr<T>(src), run_dest.data<int32_t>(), run_length.data<int32_t>(), run_start.data<int32_t>(),
        rows_sorted.data<int32_t>(), num_runs.data<int32_t>(), my.cols);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& tokens) {
  scatter_add_rows(dtable, dout, tokens);
}

}  // namespace deco::cuda
